#include "common.h"

#include <bpf/libbpf.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace sslwall {

namespace {

// Builds the error through the registered BpfError class, so JS sees that class as thrown, with no
// re-wrapping on the way out. verifierLog is undefined unless given.
Napi::Error MakeError(Napi::Env env, const std::string& op, int err, const std::string& detail,
                      const std::string& extra, const std::string* verifierLog) {
  if (err < 0) err = -err;
  if (err == 0) err = EIO;  // a failure without an errno still has to say something
  std::string msg = op;
  if (!detail.empty()) msg += "(" + detail + ")";
  msg += ": ";
  msg += std::strerror(err);
  if (!extra.empty()) msg += "\n" + extra;
  Napi::Value log = verifierLog ? Napi::String::New(env, *verifierLog) : env.Undefined();
  Napi::FunctionReference& ctor = env.GetInstanceData<AddonData>()->bpfError;
  if (ctor.IsEmpty())
    return Napi::Error::New(env, "sslwall_native: loaded without native/index.ts (no BpfError class); " + msg);
  return Napi::Error(env, ctor.New({Napi::String::New(env, msg), Napi::String::New(env, op), Napi::Number::New(env, err), log}));
}

thread_local LogCapture* current = nullptr;

int PrintFn(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  if (!current) return std::vfprintf(stderr, fmt, args);
  va_list copy;
  va_copy(copy, args);
  int n = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  if (n <= 0) return n;
  std::string s(static_cast<size_t>(n) + 1, '\0');
  std::vsnprintf(s.data(), s.size(), fmt, args);
  s.resize(static_cast<size_t>(n));
  current->append(s);
  return n;
}

}  // namespace

void ThrowBpf(Napi::Env env, const std::string& op, int err, const std::string& detail, const std::string& libbpfLog) {
  throw MakeError(env, op, err, detail, libbpfLog, nullptr);
}

void ThrowLoad(Napi::Env env, const std::string& op, int err, const std::string& detail, const std::string& verifierLog) {
  throw MakeError(env, op, err, detail, "", &verifierLog);
}

LogCapture::LogCapture() : prev_(current) { current = this; }
LogCapture::~LogCapture() { current = prev_; }

void InstallLibbpfPrint() { libbpf_set_print(PrintFn); }

int ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  return info[i].As<Napi::Number>().Int32Value();
}

uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber() || info[i].As<Napi::Number>().DoubleValue() < 0)
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a non-negative number");
  return info[i].As<Napi::Number>().Uint32Value();
}

std::string ArgStr(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsString()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

Napi::Buffer<uint8_t> ArgBuf(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsBuffer()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a Buffer");
  return info[i].As<Napi::Buffer<uint8_t>>();
}

Napi::Function ArgFn(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsFunction()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a function");
  return info[i].As<Napi::Function>();
}

}  // namespace sslwall
