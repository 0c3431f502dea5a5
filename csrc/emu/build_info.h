// Stands in for the CMake-configured build_info.h when tests/cuda_emulation.py builds
// csrc/bind_cpu.cpp as the CPU reference of the CUDA emulation (-I csrc/emu first).
#pragma once
static const char kBuildInfoJson[] = R"json({"emulation_reference": true})json";
