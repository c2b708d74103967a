// TR_HD marks a function compiled for the host and, under nvcc, for the device
// (rng.h's counter-based generator, kernels/math.h's scalar math).
#pragma once

#if defined(__CUDACC__)
#define TR_HD __host__ __device__ __forceinline__
#else
#define TR_HD inline
#endif
