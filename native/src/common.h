// Shared pieces of the addon: argument checks, BpfError construction, libbpf log capture, a small
// owning fd and FdHandle, the JS object that owns every map, program and link fd handed to JS.
#pragma once

#include <napi.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace sslwall {

// Throws a BpfError (the class native/index.ts registers) "op(detail): strerror(err)" with op and
// errno (positive). A non-empty libbpfLog (what libbpf printed during the call) is appended to the
// message.
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
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    reset(o.release());
    return *this;
  }
  int get() const { return fd_; }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  int release() { int fd = fd_; fd_ = -1; return fd; }

 private:
  int fd_;
};

// What an FdHandle holds. The kind is fixed by whoever creates the handle (an object's map, an
// attach, a pin checked on open), so a map fd can never reach an operation on programs.
enum class FdKind { kMap, kProg, kLink };
const char* KindName(FdKind kind);

// A JS object owning one BPF fd: close() closes it, and so does the finalizer for a handle
// dropped unclosed (for an unpinned link that detaches it, as bpf_link__destroy would). After
// close() every operation given the handle throws BpfError EBADF.
class FdHandle : public Napi::ObjectWrap<FdHandle> {
 public:
  static Napi::Function Define(Napi::Env env);
  // Wraps fd (owned from here on) in a new handle; `what` names it in errors ("map lru").
  static Napi::Object New(Napi::Env env, FdKind kind, UniqueFd fd, const std::string& what);
  explicit FdHandle(const Napi::CallbackInfo& info);
  FdKind kind() const { return kind_; }
  // The open fd, or BpfError(op, EBADF) once closed.
  int Fd(Napi::Env env, const std::string& op) const;

 private:
  void Close(const Napi::CallbackInfo& info);
  Napi::Value GetFd(const Napi::CallbackInfo& info);
  Napi::Value GetKind(const Napi::CallbackInfo& info);
  Napi::Value GetClosed(const Napi::CallbackInfo& info);
  Napi::Value ToString(const Napi::CallbackInfo& info);

  FdKind kind_ = FdKind::kMap;
  UniqueFd fd_;
  std::string what_;
};

// Argument accessors: a wrong type is a programming error in the caller, so a TypeError.
int ArgInt(const Napi::CallbackInfo& info, size_t i, const char* name);
uint32_t ArgU32(const Napi::CallbackInfo& info, size_t i, const char* name);
std::string ArgStr(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Buffer<uint8_t> ArgBuf(const Napi::CallbackInfo& info, size_t i, const char* name);
Napi::Function ArgFn(const Napi::CallbackInfo& info, size_t i, const char* name);
// The fd of an open handle of `kind`: TypeError for anything else, BpfError(op, EBADF) if closed.
int ArgHandle(const Napi::CallbackInfo& info, size_t i, FdKind kind, const char* name, const std::string& op);
// Same, for operations that take a handle of any kind (pin).
int ArgAnyHandle(const Napi::CallbackInfo& info, size_t i, const char* name, const std::string& op);

// Constructors of the ObjectWrap classes, kept per env (worker threads get their own).
struct AddonData {
  Napi::FunctionReference bpfObject;
  Napi::FunctionReference ringBufferPoller;
  Napi::FunctionReference fdHandle;
  Napi::FunctionReference bpfError;  // set by setErrorClass (native/index.ts, at load)
};

void InitHandles(Napi::Env env, Napi::Object exports);
void InitObject(Napi::Env env, Napi::Object exports);
void InitMaps(Napi::Env env, Napi::Object exports);
void InitLinks(Napi::Env env, Napi::Object exports);
void InitSys(Napi::Env env, Napi::Object exports);
void InitRingBuffer(Napi::Env env, Napi::Object exports);

}  // namespace sslwall
