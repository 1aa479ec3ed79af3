#!/usr/bin/env bash
# cibuildwheel's before-all, in the manylinux_2_28 container (AlmaLinux 8):
# the host compiler, and for a CUDA variant the parts of the CUDA toolkit the
# build uses, from NVIDIA's RHEL 8 repository.
#
#   MACKO_CUDA=12.6 (12.8, 13.0, ...)   the toolkit release to install
#   MACKO_BUILD_CUDA=0                  a CPU-only variant: no toolkit
#
# What the build needs, found from the compiler's header dependencies: nvcc
# (cuda-compiler: nvcc, its crt headers and NVVM), the runtime headers and
# libcudart (cuda-cudart-devel), CCCL (cuda-cccl) and cuda.h, which c10/cuda
# includes (cuda-driver-devel). csrc/ includes no cuBLAS/cuSPARSE/cuSOLVER
# header (it does not use ATen/cuda/CUDAContext.h); if it ever does, add
# libcublas-devel-$v libcusparse-devel-$v libcusolver-devel-$v below.
set -euxo pipefail

dnf install -y gcc-toolset-13-gcc gcc-toolset-13-gcc-c++

if [ "${MACKO_BUILD_CUDA:-1}" = "0" ]; then
  exit 0
fi
: "${MACKO_CUDA:?set MACKO_CUDA to the CUDA toolkit release, e.g. 12.6}"
v=${MACKO_CUDA//./-}
dnf config-manager --add-repo https://developer.download.nvidia.com/compute/cuda/repos/rhel8/x86_64/cuda-rhel8.repo
dnf install -y --setopt=install_weak_deps=False \
  "cuda-compiler-$v" "cuda-cudart-devel-$v" "cuda-cccl-$v" "cuda-driver-devel-$v"
dnf clean all
ln -sfn "/usr/local/cuda-$MACKO_CUDA" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
/opt/rh/gcc-toolset-13/root/usr/bin/gcc --version
