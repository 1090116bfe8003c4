// FdHandle: the only way a BPF fd reaches JS, and setErrorClass, which hands the addon the
// BpfError class it throws.
#include <cerrno>
#include <string>

#include "common.h"

namespace sslwall {

namespace {

// What New() passes through the JS constructor; a constructor call from JS lacks it and is refused.
struct HandleInit {
  FdKind kind;
  UniqueFd fd;
  std::string what;
};

void SetErrorClass(const Napi::CallbackInfo& info) {
  info.Env().GetInstanceData<AddonData>()->bpfError = Napi::Persistent(ArgFn(info, 0, "BpfError"));
}

FdHandle* Unwrap(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Env env = info.Env();
  Napi::Value v = info[i];
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(env.GetInstanceData<AddonData>()->fdHandle.Value()))
    throw Napi::TypeError::New(env, std::string(name) + " must be a handle from the addon, not a bare fd or other value");
  return FdHandle::Unwrap(v.As<Napi::Object>());
}

}  // namespace

const char* KindName(FdKind kind) {
  switch (kind) {
    case FdKind::kMap: return "map";
    case FdKind::kProg: return "prog";
    case FdKind::kLink: return "link";
  }
  return "?";
}

Napi::Function FdHandle::Define(Napi::Env env) {
  return DefineClass(env, "FdHandle",
                     {
                         InstanceMethod<&FdHandle::Close>("close"),
                         InstanceMethod<&FdHandle::ToString>("toString"),
                         InstanceAccessor<&FdHandle::GetFd>("fd"),
                         InstanceAccessor<&FdHandle::GetKind>("kind"),
                         InstanceAccessor<&FdHandle::GetClosed>("closed"),
                     });
}

Napi::Object FdHandle::New(Napi::Env env, FdKind kind, UniqueFd fd, const std::string& what) {
  HandleInit init{kind, std::move(fd), what};
  return env.GetInstanceData<AddonData>()->fdHandle.New({Napi::External<HandleInit>::New(env, &init)});
}

FdHandle::FdHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdHandle>(info) {
  if (!info[0].IsExternal()) throw Napi::TypeError::New(info.Env(), "handles come from the addon's operations; they cannot be constructed");
  HandleInit* init = info[0].As<Napi::External<HandleInit>>().Data();
  kind_ = init->kind;
  fd_ = std::move(init->fd);
  what_ = init->what;
}

int FdHandle::Fd(Napi::Env env, const std::string& op) const {
  if (fd_.get() < 0) ThrowBpf(env, op, EBADF, std::string(KindName(kind_)) + " handle " + what_ + " is closed");
  return fd_.get();
}

// No retry on EINTR: on Linux the fd is released even when close() reports it. Closing twice is a no-op.
void FdHandle::Close(const Napi::CallbackInfo& info) {
  int fd = fd_.release();
  if (fd >= 0 && ::close(fd) < 0) ThrowBpf(info.Env(), "close", errno, what_);
}

// The fd number, for logs and /proc checks: -1 once closed. Operations take the handle, never this.
Napi::Value FdHandle::GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_.get()); }
Napi::Value FdHandle::GetKind(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), KindName(kind_)); }
Napi::Value FdHandle::GetClosed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), fd_.get() < 0); }

Napi::Value FdHandle::ToString(const Napi::CallbackInfo& info) {
  std::string s = std::string(KindName(kind_)) + " handle " + what_;
  s += fd_.get() < 0 ? " (closed)" : " (fd " + std::to_string(fd_.get()) + ")";
  return Napi::String::New(info.Env(), s);
}

int ArgHandle(const Napi::CallbackInfo& info, size_t i, FdKind kind, const char* name, const std::string& op) {
  FdHandle* h = Unwrap(info, i, name);
  if (h->kind() != kind)
    throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a " + KindName(kind) + " handle, got a " + KindName(h->kind()) + " handle");
  return h->Fd(info.Env(), op);
}

int ArgAnyHandle(const Napi::CallbackInfo& info, size_t i, const char* name, const std::string& op) {
  return Unwrap(info, i, name)->Fd(info.Env(), op);
}

void InitHandles(Napi::Env env, Napi::Object exports) {
  env.GetInstanceData<AddonData>()->fdHandle = Napi::Persistent(FdHandle::Define(env));
  exports.Set("setErrorClass", Napi::Function::New<SetErrorClass>(env, "setErrorClass"));
}

}  // namespace sslwall
