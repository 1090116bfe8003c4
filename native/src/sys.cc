// Handle-level operations: pinning, opening pins and ids, object info, test runs, interface lookup.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <net/if.h>

#include <cstddef>
#include <cstring>
#include <string>

#include "common.h"

namespace sslwall {

namespace {

constexpr uint32_t kBpfLinkTypeTcx = 11;  // BPF_LINK_TYPE_TCX, kernel 6.6; not in the 6.1 headers

void Pin(const Napi::CallbackInfo& info) {
  std::string file = ArgStr(info, 1, "file");
  int err = bpf_obj_pin(ArgAnyHandle(info, 0, "handle", "bpf_obj_pin"), file.c_str());
  if (err) ThrowBpf(info.Env(), "bpf_obj_pin", -err, file);
}

FdKind ArgKind(const Napi::CallbackInfo& info, size_t i) {
  std::string kind = ArgStr(info, i, "kind");
  for (FdKind k : {FdKind::kMap, FdKind::kProg, FdKind::kLink})
    if (kind == KindName(k)) return k;
  throw Napi::TypeError::New(info.Env(), "kind must be 'map', 'prog' or 'link'");
}

// What the kernel says an fd is: bpf fds are anon inodes named "bpf-map", "bpf-prog", and for
// links "bpf_link" when created but "bpf-link" when reopened from a pin or an id.
bool IsKind(int fd, FdKind kind) {
  char buf[64];
  std::string link = "/proc/self/fd/" + std::to_string(fd);
  ssize_t n = ::readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n < 0) return false;
  std::string target(buf, static_cast<size_t>(n));
  switch (kind) {
    case FdKind::kMap: return target == "anon_inode:bpf-map";
    case FdKind::kProg: return target == "anon_inode:bpf-prog";
    case FdKind::kLink: return target == "anon_inode:bpf_link" || target == "anon_inode:bpf-link";
  }
  return false;
}

// bpf_obj_get, checked against the kind the caller expects: a pin of another kind is an error here,
// not a wrong handle later.
Napi::Value GetPinned(const Napi::CallbackInfo& info) {
  std::string file = ArgStr(info, 0, "file");
  FdKind kind = ArgKind(info, 1);
  int ret = bpf_obj_get(file.c_str());
  if (ret < 0) ThrowBpf(info.Env(), "bpf_obj_get", -ret, file);
  UniqueFd fd(ret);
  if (!IsKind(fd.get(), kind)) ThrowBpf(info.Env(), "bpf_obj_get", EINVAL, file + " is not a pinned " + KindName(kind));
  return FdHandle::New(info.Env(), kind, std::move(fd), "pinned " + file);
}

template <typename Info>
Info GetInfo(const Napi::CallbackInfo& info, FdKind kind) {
  Info out{};
  uint32_t len = sizeof(out);
  int err = bpf_obj_get_info_by_fd(ArgHandle(info, 0, kind, "handle", "bpf_obj_get_info_by_fd"), &out, &len);
  if (err) ThrowBpf(info.Env(), "bpf_obj_get_info_by_fd", -err);
  return out;
}

Napi::Value ProgInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto pi = GetInfo<bpf_prog_info>(info, FdKind::kProg);
  char tag[2 * BPF_TAG_SIZE + 1];
  for (int i = 0; i < BPF_TAG_SIZE; i++) std::snprintf(tag + 2 * i, 3, "%02x", pi.tag[i]);
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", pi.id);
  o.Set("name", std::string(pi.name, strnlen(pi.name, sizeof(pi.name))));
  o.Set("tag", std::string(tag));
  o.Set("type", pi.type);
  return o;
}

Napi::Value LinkInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto li = GetInfo<bpf_link_info>(info, FdKind::kLink);
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", li.id);
  o.Set("progId", li.prog_id);
  o.Set("type", li.type);
  if (li.type == kBpfLinkTypeTcx) {
    // The kernel fills its 6.6+ union member `struct { __u32 ifindex; __u32 attach_type; } tcx`,
    // which these headers lack: read it from the union's first 8 bytes.
    uint32_t tcx[2];
    std::memcpy(tcx, reinterpret_cast<const uint8_t*>(&li) + offsetof(bpf_link_info, raw_tracepoint), sizeof(tcx));
    o.Set("ifindex", tcx[0]);
    o.Set("attachType", tcx[1]);
  } else if (li.type == BPF_LINK_TYPE_CGROUP) {
    o.Set("cgroupId", Napi::BigInt::New(env, static_cast<uint64_t>(li.cgroup.cgroup_id)));
    o.Set("attachType", li.cgroup.attach_type);
  }
  return o;
}

Napi::Value MapInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto mi = GetInfo<bpf_map_info>(info, FdKind::kMap);
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", mi.id);
  o.Set("type", mi.type);
  o.Set("keySize", mi.key_size);
  o.Set("valueSize", mi.value_size);
  o.Set("maxEntries", mi.max_entries);
  o.Set("name", std::string(mi.name, strnlen(mi.name, sizeof(mi.name))));
  // BTF of the map's key and value: how an older build laid out a pinned map (migration).
  o.Set("btfId", mi.btf_id);
  o.Set("btfKeyTypeId", mi.btf_key_type_id);
  o.Set("btfValueTypeId", mi.btf_value_type_id);
  return o;
}

Napi::Value TestRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int progFd = ArgHandle(info, 0, FdKind::kProg, "prog", "bpf_prog_test_run_opts");
  Napi::Buffer<uint8_t> data = ArgBuf(info, 1, "data");
  uint32_t repeat = ArgU32(info, 2, "repeat");
  // Room for programs that grow the packet (bpf_skb_adjust_room, encap headers).
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(env, data.Length() + 256);
  bpf_test_run_opts opts{};
  opts.sz = sizeof(opts);
  opts.data_in = data.Data();
  opts.data_size_in = static_cast<uint32_t>(data.Length());
  opts.data_out = out.Data();
  opts.data_size_out = static_cast<uint32_t>(out.Length());
  opts.repeat = repeat;
  int err = bpf_prog_test_run_opts(progFd, &opts);
  if (err) ThrowBpf(env, "bpf_prog_test_run_opts", -err);
  Napi::Object o = Napi::Object::New(env);
  o.Set("retval", opts.retval);
  o.Set("durationNs", opts.duration);  // the kernel's mean over `repeat` runs
  o.Set("dataOut", Napi::Buffer<uint8_t>::Copy(env, out.Data(), opts.data_size_out));
  return o;
}

Napi::Value IfNameToIndex(const Napi::CallbackInfo& info) {
  std::string name = ArgStr(info, 0, "name");
  unsigned idx = if_nametoindex(name.c_str());
  if (idx == 0) ThrowBpf(info.Env(), "if_nametoindex", errno, name);
  return Napi::Number::New(info.Env(), idx);
}

// Every link id in the system (bpf_link_get_next_id): to find links by what they are
// attached to, e.g. the tcx links of one interface, whoever pinned them.
Napi::Value LinkIds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  __u32 id = 0;
  uint32_t n = 0;
  while (bpf_link_get_next_id(id, &id) == 0) out.Set(n++, id);
  if (errno != ENOENT) ThrowBpf(env, "bpf_link_get_next_id", errno);
  return out;
}

Napi::Value LinkById(const Napi::CallbackInfo& info) {
  uint32_t id = ArgU32(info, 0, "id");
  int fd = bpf_link_get_fd_by_id(id);
  if (fd < 0) ThrowBpf(info.Env(), "bpf_link_get_fd_by_id", errno, "link id " + std::to_string(id));
  return FdHandle::New(info.Env(), FdKind::kLink, UniqueFd(fd), "link id " + std::to_string(id));
}

Napi::Value ProgById(const Napi::CallbackInfo& info) {
  uint32_t id = ArgU32(info, 0, "id");
  int fd = bpf_prog_get_fd_by_id(id);
  if (fd < 0) ThrowBpf(info.Env(), "bpf_prog_get_fd_by_id", errno, "prog id " + std::to_string(id));
  return FdHandle::New(info.Env(), FdKind::kProg, UniqueFd(fd), "prog id " + std::to_string(id));
}

}  // namespace

void InitSys(Napi::Env env, Napi::Object exports) {
  exports.Set("pin", Napi::Function::New<Pin>(env, "pin"));
  exports.Set("getPinned", Napi::Function::New<GetPinned>(env, "getPinned"));
  exports.Set("progInfo", Napi::Function::New<ProgInfo>(env, "progInfo"));
  exports.Set("linkInfo", Napi::Function::New<LinkInfo>(env, "linkInfo"));
  exports.Set("linkIds", Napi::Function::New<LinkIds>(env, "linkIds"));
  exports.Set("progById", Napi::Function::New<ProgById>(env, "progById"));
  exports.Set("linkById", Napi::Function::New<LinkById>(env, "linkById"));
  exports.Set("mapInfo", Napi::Function::New<MapInfo>(env, "mapInfo"));
  exports.Set("testRun", Napi::Function::New<TestRun>(env, "testRun"));
  exports.Set("ifNameToIndex", Napi::Function::New<IfNameToIndex>(env, "ifNameToIndex"));
}

}  // namespace sslwall
