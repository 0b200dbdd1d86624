// tvm_run: runs the `main` of a TVM Relax library (export_library of a relax.VMExecutable) on the CPU,
// without Python, so a cross-compiled library can be checked under qemu-user with TVM's own runtime.
//
//   tvm_run LIB OUT.bin IN.bin:DTYPE:D0xD1x... [IN.bin:DTYPE:SHAPE ...]
//
// Each input file holds the tensor's raw little-endian bytes. The outputs (one tensor or a tuple of
// them) are written one after another into OUT.bin; stdout gets one line per output: "DTYPE D0xD1x...".
// Exit code 1 on any error, with the message on stderr.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct HostAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = static_cast<size_t>(ffi::ShapeView(t->shape, t->ndim).Product()) * (t->dtype.bits / 8);
    t->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

const std::pair<const char*, DLDataType> kTypes[] = {
    {"float32", {kDLFloat, 32, 1}}, {"float64", {kDLFloat, 64, 1}}, {"int8", {kDLInt, 8, 1}},
    {"uint8", {kDLUInt, 8, 1}},     {"int16", {kDLInt, 16, 1}},     {"int32", {kDLInt, 32, 1}},
    {"int64", {kDLInt, 64, 1}},     {"bool", {kDLBool, 8, 1}}};

DLDataType ParseType(const std::string& name) {
  for (const auto& [known, type] : kTypes) {
    if (name == known) return type;
  }
  throw std::runtime_error("unknown dtype " + name);
}

std::string TypeName(DLDataType type) {
  for (const auto& [known, candidate] : kTypes) {
    if (candidate.code == type.code && candidate.bits == type.bits) return known;
  }
  return "unknown";
}

ffi::Tensor ReadInput(const std::string& spec) {
  size_t first = spec.find(':'), second = spec.find(':', first + 1);
  if (first == std::string::npos || second == std::string::npos) throw std::runtime_error("bad input " + spec);
  std::vector<int64_t> shape;
  std::stringstream dims(spec.substr(second + 1));
  for (std::string dim; std::getline(dims, dim, 'x');) shape.push_back(std::stoll(dim));
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(HostAlloc(), ffi::Shape(shape), ParseType(spec.substr(first + 1, second - first - 1)),
                                                DLDevice{kDLCPU, 0});
  size_t bytes = static_cast<size_t>(tensor.numel()) * (tensor.dtype().bits / 8);
  std::ifstream file(spec.substr(0, first), std::ios::binary);
  if (!file.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(bytes))) {
    throw std::runtime_error("cannot read " + std::to_string(bytes) + " bytes from " + spec.substr(0, first));
  }
  return tensor;
}

void WriteOutput(const ffi::Tensor& tensor, std::ofstream& out) {
  std::string shape;
  for (int i = 0; i < tensor.ndim(); ++i) shape += (i ? "x" : "") + std::to_string(tensor.shape()[i]);
  std::printf("%s %s\n", TypeName(tensor.dtype()).c_str(), shape.c_str());
  out.write(static_cast<const char*>(tensor.data_ptr()),
            static_cast<std::streamsize>(tensor.numel() * (tensor.dtype().bits / 8)));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: tvm_run LIB OUT.bin IN.bin:DTYPE:D0xD1... [...]\n");
    return 1;
  }
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);  // 2: pooled allocator
    std::vector<ffi::Any> inputs;
    for (int i = 3; i < argc; ++i) inputs.push_back(ReadInput(argv[i]));
    std::vector<ffi::AnyView> views(inputs.begin(), inputs.end());
    ffi::Any result;
    vm->GetFunction("main").value().CallPacked(views.data(), static_cast<int>(views.size()), &result);
    std::ofstream out(argv[2], std::ios::binary);
    if (auto tensor = result.as<ffi::Tensor>()) {
      WriteOutput(*tensor, out);
    } else {
      for (const ffi::Any& item : result.cast<ffi::Array<ffi::Any>>()) WriteOutput(item.cast<ffi::Tensor>(), out);
    }
    return out ? 0 : 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "tvm_run: %s\n", error.what());
    return 1;
  }
}
