// Optimizer updates, in place, one thread per parameter element (grid-stride). Templates on T.
//
// SGD (PyTorch's rule):
//   d = grad + weight_decay * param
//   if momentum != 0:  buf = first_step ? d : momentum * buf + one_minus_dampening * d
//                      d = nesterov ? d + momentum * buf : buf
//   param -= lr * d
// Adam (PyTorch's rule, L2 weight decay added to the gradient, no amsgrad):
//   g = grad + weight_decay * param
//   m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g^2
//   param -= step_size * m / (sqrt(v) / sqrt_bias_correction2 + eps)
// with step_size = lr / (1 - beta1^step) and sqrt_bias_correction2 = sqrt(1 - beta2^step).
// AdamW (decoupled weight decay, Loshchilov and Hutter; PyTorch's rule) is the same kernel with
// weight_decay = 0 and param_scale = 1 - lr * decay, which multiplies param before the update:
//   param = param * param_scale - step_size * m / (...)    (Adam: param_scale = 1, exact)
// Every derived constant (1 - beta, 1 - dampening, step_size, the bias correction) is computed on
// the host in float64 and passed as T: 1 - float(0.999) in float32 would be off by 1.3e-5.
//
// Versions (ops "sgd_step", "adam_step"; AdamW is adam_step): v1 only (one element per loop step; the update is
// bandwidth-bound and reads/writes 3-4 arrays once, so there is little left to win).
#include "common.cuh"

// One element of each rule, shared by the by-value kernels and the device-constant ones below.
template <typename T>
__device__ __forceinline__ void gc_sgd_update(T* __restrict__ param, const T* __restrict__ grad,
                                              T* __restrict__ buf, int i, T lr, T momentum,
                                              T one_minus_dampening, T weight_decay, bool nesterov,
                                              bool first_step) {
    const T p = param[i];
    T d = grad[i];
    if (weight_decay != T(0)) d += weight_decay * p;
    if (momentum != T(0)) {
        const T b = first_step ? d : momentum * buf[i] + one_minus_dampening * d;
        buf[i] = b;
        d = nesterov ? d + momentum * b : b;
    }
    param[i] = p - lr * d;
}

template <typename T>
__device__ __forceinline__ void gc_adam_update(T* __restrict__ param, const T* __restrict__ grad,
                                               T* __restrict__ m, T* __restrict__ v, int i, T beta1,
                                               T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                               T weight_decay, T step_size, T sqrt_bias_correction2,
                                               T param_scale) {
    const T p = param[i];
    T g = grad[i];
    if (weight_decay != T(0)) g += weight_decay * p;
    const T mi = beta1 * m[i] + one_minus_beta1 * g;
    const T vi = beta2 * v[i] + one_minus_beta2 * (g * g);
    m[i] = mi;
    v[i] = vi;
    param[i] = p * param_scale - step_size * (mi / (gc_sqrt(vi) / sqrt_bias_correction2 + eps));
}

template <typename T>
__global__ void sgd_step_v1(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ buf,
                            int n, T lr, T momentum, T one_minus_dampening, T weight_decay,
                            int nesterov, int first_step) {
    GC_GRID_STRIDE_LOOP(i, n) {
        gc_sgd_update(param, grad, buf, i, lr, momentum, one_minus_dampening, weight_decay, nesterov != 0,
                      first_step != 0);
    }
}

template <typename T>
__global__ void adam_step_v1(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ m,
                             T* __restrict__ v, int n, T beta1, T one_minus_beta1, T beta2,
                             T one_minus_beta2, T eps, T weight_decay, T step_size,
                             T sqrt_bias_correction2, T param_scale) {
    GC_GRID_STRIDE_LOOP(i, n) {
        gc_adam_update(param, grad, m, v, i, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                       weight_decay, step_size, sqrt_bias_correction2, param_scale);
    }
}

// ---- device-resident constants (graph-safe updates) ----------------------------------------
// The same rules with every per-update constant read from `hp`, a small array in device memory,
// instead of passed by value: a captured CUDA graph replays the argument values of its capture, so
// a rate or bias correction that changes per step must be read from memory the host refreshes
// between replays (docs/graphs.md). Row layouts (built on the host in float64, stored as T):
//   sgd:  lr, momentum, one_minus_dampening, weight_decay, nesterov (0/1), first_step (0/1)
//   adam: beta1, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, step_size,
//         sqrt_bias_correction2, param_scale
// Ops "sgd_step_dev", "adam_step_dev": v1 only.

template <typename T>
__global__ void sgd_step_dev_v1(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ buf,
                                int n, const T* __restrict__ hp) {
    const T lr = hp[0], momentum = hp[1], one_minus_dampening = hp[2], weight_decay = hp[3];
    const bool nesterov = hp[4] != T(0), first_step = hp[5] != T(0);
    GC_GRID_STRIDE_LOOP(i, n) {
        gc_sgd_update(param, grad, buf, i, lr, momentum, one_minus_dampening, weight_decay, nesterov,
                      first_step);
    }
}

template <typename T>
__global__ void adam_step_dev_v1(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ m,
                                 T* __restrict__ v, int n, const T* __restrict__ hp) {
    GC_GRID_STRIDE_LOOP(i, n) {
        gc_adam_update(param, grad, m, v, i, hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], hp[7], hp[8]);
    }
}
