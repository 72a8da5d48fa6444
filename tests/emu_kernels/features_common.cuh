// Included by features.cu through a quoted include relative to the .cu file.
#pragma once
#define FEATURES_WARP 32
