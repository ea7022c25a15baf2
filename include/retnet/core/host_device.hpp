#pragma once
// RETNET_HD marks index math shared by host code and CUDA kernels; without nvcc it is plain inline.
#if defined(__CUDACC__)
#define RETNET_HD __host__ __device__ inline
#else
#define RETNET_HD inline
#endif
