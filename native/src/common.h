// Shared pieces of the addon: argument checks, the error shape native/index.ts turns into BpfError,
// libbpf log capture and a small owning fd.
#pragma once

#include <napi.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace sslwall {

// Throws a JS Error "op(detail): strerror(err)" with properties op and errno (positive).
// A non-empty libbpfLog (what libbpf printed during the call) is appended to the message.
[[noreturn]] void ThrowBpf(Napi::Env env, const std::string& op, int err, const std::string& detail = "",
                           const std::string& libbpfLog = "");
// As ThrowBpf, for loads: the captured libbpf + verifier log goes to the verifierLog property.
[[noreturn]] void ThrowLoad(Napi::Env env, const std::string& op, int err, const std::string& detail,
                            const std::string& verifierLog);

// While alive, everything libbpf prints on this thread is collected into log() instead of stderr.
// libbpf_set_print is process-global, so the routing is per thread: the ring-buffer thread never
// captures and its (rare) warnings still reach stderr.
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  const std::string& log() const { return log_; }
  void append(const std::string& s) { log_ += s; }

 private:
  std::string log_;
  LogCapture* prev_;
};
void InstallLibbpfPrint();

// Owns a file descriptor; closes it on scope exit unless release()d.
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() { if (fd_ >= 0) ::close(fd_); }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  int release() { int fd = fd_; fd_ = -1; return fd; }

 private:
  int fd_;
};

// Argument accessors: a wrong type is a programming error in the caller, so a TypeError.
int ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name);
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string ArgStr(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Buffer<uint8_t> ArgBuf(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Function ArgFn(const Napi::CallbackInfo& info, size_t i, const char* name);

// Constructors of the ObjectWrap classes, kept per env (worker threads get their own).
struct AddonData {
  Napi::FunctionReference bpfObject;
  Napi::FunctionReference ringBufferPoller;
};

void InitObject(Napi::Env env, Napi::Object exports);
void InitMaps(Napi::Env env, Napi::Object exports);
void InitLinks(Napi::Env env, Napi::Object exports);
void InitSys(Napi::Env env, Napi::Object exports);
void InitRingBuffer(Napi::Env env, Napi::Object exports);

}  // namespace sslwall
