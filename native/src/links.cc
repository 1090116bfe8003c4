// Attachments made from handles rather than from a BpfObject: tcx links, classic tc (clsact), link
// update/detach, and reading a BPF iterator.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>
#include <string>
#include <vector>

#include "common.h"

namespace sslwall {

namespace {

// tcx (kernel 6.6) postdates the installed 6.1 uapi headers. libbpf 1.1's bpf_link_create passes an
// attach type it does not know straight to BPF_LINK_CREATE with target_fd read by the kernel as
// target_ifindex, and leaves the tcx relative_fd/expected_revision fields zero (append at the end).
constexpr int kBpfTcxIngress = 46;
constexpr int kBpfTcxEgress = 47;

bool Ingress(const Napi::CallbackInfo& info, size_t i) {
  std::string dir = ArgStr(info, i, "direction");
  if (dir != "ingress" && dir != "egress") throw Napi::TypeError::New(info.Env(), "direction must be 'ingress' or 'egress'");
  return dir == "ingress";
}

Napi::Value TcxAttach(const Napi::CallbackInfo& info) {
  int progFd = ArgHandle(info, 0, FdKind::kProg, "prog", "bpf_link_create");
  int ifindex = ArgInt(info, 1, "ifindex");
  bool ingress = Ingress(info, 2);
  int fd = bpf_link_create(progFd, ifindex, static_cast<bpf_attach_type>(ingress ? kBpfTcxIngress : kBpfTcxEgress), nullptr);
  if (fd < 0)
    ThrowBpf(info.Env(), "bpf_link_create", -fd, std::string(ingress ? "tcx_ingress" : "tcx_egress") + " ifindex " + std::to_string(ifindex));
  std::string what = std::string(ingress ? "tcx_ingress" : "tcx_egress") + " link on ifindex " + std::to_string(ifindex);
  return FdHandle::New(info.Env(), FdKind::kLink, UniqueFd(fd), what);
}

bpf_tc_hook Hook(int ifindex, bool ingress) {
  bpf_tc_hook hook{};
  hook.sz = sizeof(hook);
  hook.ifindex = ifindex;
  hook.attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS;
  return hook;
}

void TcAttach(const Napi::CallbackInfo& info) {
  int progFd = ArgHandle(info, 0, FdKind::kProg, "prog", "bpf_tc_attach");
  int ifindex = ArgInt(info, 1, "ifindex");
  bpf_tc_hook hook = Hook(ifindex, Ingress(info, 2));
  bpf_tc_opts opts{};
  opts.sz = sizeof(opts);
  opts.handle = ArgU32(info, 3, "handle");
  opts.priority = ArgU32(info, 4, "priority");
  opts.prog_fd = progFd;
  opts.flags = BPF_TC_F_REPLACE;
  LogCapture log;
  // Creates the clsact qdisc (serving both directions); one left by an earlier run is ours to reuse.
  int err = bpf_tc_hook_create(&hook);
  if (err && err != -EEXIST) ThrowBpf(info.Env(), "bpf_tc_hook_create", -err, "ifindex " + std::to_string(ifindex), log.log());
  err = bpf_tc_attach(&hook, &opts);
  if (err) ThrowBpf(info.Env(), "bpf_tc_attach", -err, "ifindex " + std::to_string(ifindex), log.log());
}

void TcDetach(const Napi::CallbackInfo& info) {
  int ifindex = ArgInt(info, 0, "ifindex");
  bpf_tc_hook hook = Hook(ifindex, Ingress(info, 1));
  // Detach is by handle/priority only: libbpf rejects a non-zero prog_fd, prog_id or flags here.
  bpf_tc_opts opts{};
  opts.sz = sizeof(opts);
  opts.handle = ArgU32(info, 2, "handle");
  opts.priority = ArgU32(info, 3, "priority");
  LogCapture log;
  int err = bpf_tc_detach(&hook, &opts);
  if (err) ThrowBpf(info.Env(), "bpf_tc_detach", -err, "ifindex " + std::to_string(ifindex), log.log());
}

void LinkUpdate(const Napi::CallbackInfo& info) {
  int link = ArgHandle(info, 0, FdKind::kLink, "link", "bpf_link_update");
  int err = bpf_link_update(link, ArgHandle(info, 1, FdKind::kProg, "prog", "bpf_link_update"), nullptr);
  if (err) ThrowBpf(info.Env(), "bpf_link_update", -err);
}

void LinkDetach(const Napi::CallbackInfo& info) {
  int err = bpf_link_detach(ArgHandle(info, 0, FdKind::kLink, "link", "bpf_link_detach"));
  if (err) ThrowBpf(info.Env(), "bpf_link_detach", -err);
}

// Each bpf_iter_create starts a fresh pass of the iterator; read() runs the program until EOF.
Napi::Value IterRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int ret = bpf_iter_create(ArgHandle(info, 0, FdKind::kLink, "link", "bpf_iter_create"));
  if (ret < 0) ThrowBpf(env, "bpf_iter_create", -ret);
  UniqueFd fd(ret);
  std::vector<uint8_t> out;
  uint8_t chunk[8192];
  for (;;) {
    ssize_t n = ::read(fd.get(), chunk, sizeof(chunk));
    if (n > 0) {
      out.insert(out.end(), chunk, chunk + n);
    } else if (n == 0) {
      break;
    } else if (errno != EINTR && errno != EAGAIN) {
      ThrowBpf(env, "read", errno, "bpf iterator");
    }
  }
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

}  // namespace

void InitLinks(Napi::Env env, Napi::Object exports) {
  exports.Set("tcxAttach", Napi::Function::New<TcxAttach>(env, "tcxAttach"));
  exports.Set("tcAttach", Napi::Function::New<TcAttach>(env, "tcAttach"));
  exports.Set("tcDetach", Napi::Function::New<TcDetach>(env, "tcDetach"));
  exports.Set("linkUpdate", Napi::Function::New<LinkUpdate>(env, "linkUpdate"));
  exports.Set("linkDetach", Napi::Function::New<LinkDetach>(env, "linkDetach"));
  exports.Set("iterRun", Napi::Function::New<IterRun>(env, "iterRun"));
}

}  // namespace sslwall
