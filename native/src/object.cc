// BpfObject: a JS handle owning one struct bpf_object from open to close. Its maps, programs and
// links come out as FdHandles owning fds of their own.
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include <fcntl.h>

#include <cstring>
#include <sys/mman.h>
#include <unistd.h>
#include <memory>

#include "common.h"

namespace sslwall {

namespace {

struct ObjectCloser {
  void operator()(bpf_object* o) const { bpf_object__close(o); }
};

// Links returned to JS must outlive the BpfObject and any bpf_link struct. bpf_link__disconnect
// makes bpf_link__destroy skip the link's detach callback, and that callback is the only place
// libbpf closes the link fd: after this the fd, and with it the kernel attachment, belongs to the
// caller (closing it detaches unless the link is pinned). For perf-event links (tracepoint/,
// kprobe/) libbpf also keeps a perf event fd that this leaves open: one per such attach.
Napi::Object TakeLink(Napi::Env env, bpf_link* link, const std::string& what) {
  UniqueFd fd(bpf_link__fd(link));
  bpf_link__disconnect(link);
  bpf_link__destroy(link);
  return FdHandle::New(env, FdKind::kLink, std::move(fd), what);
}

// An owned duplicate of an fd libbpf keeps inside the bpf_object: the handle stays valid after
// the object is closed, and closing the handle leaves the object's own fd alone.
Napi::Object DupHandle(Napi::Env env, FdKind kind, int fd, const std::string& what) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) ThrowBpf(env, "fcntl(F_DUPFD_CLOEXEC)", errno, what);
  return FdHandle::New(env, kind, UniqueFd(dup), what);
}

}  // namespace

class BpfObject : public Napi::ObjectWrap<BpfObject> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "BpfObject",
                       {
                           InstanceMethod<&BpfObject::SetRodata>("setRodata"),
                           InstanceMethod<&BpfObject::ReuseMap>("reuseMap"),
                           InstanceMethod<&BpfObject::Load>("load"),
                           InstanceMethod<&BpfObject::Prog>("prog"),
                           InstanceMethod<&BpfObject::MapHandle>("map"),
                           InstanceMethod<&BpfObject::MapDef>("mapDef"),
                           InstanceMethod<&BpfObject::AttachTracing>("attachTracing"),
                           InstanceMethod<&BpfObject::AttachIter>("attachIter"),
                           InstanceMethod<&BpfObject::AttachCgroup>("attachCgroup"),
                           InstanceMethod<&BpfObject::Close>("close"),
                       });
  }

  explicit BpfObject(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BpfObject>(info) {
    path_ = ArgStr(info, 0, "file");
    LogCapture log;
    bpf_object* obj = bpf_object__open_file(path_.c_str(), nullptr);
    if (!obj) {
      int err = errno;
      ThrowBpf(info.Env(), "bpf_object__open_file", err, path_, log.log());
    }
    obj_.reset(obj);
  }

 private:
  bpf_object* Obj(Napi::Env env) {
    if (!obj_) ThrowBpf(env, "BpfObject", EBADF, path_ + " is closed");
    return obj_.get();
  }

  bpf_program* FindProg(const Napi::CallbackInfo& info) {
    std::string name = ArgStr(info, 0, "progName");
    bpf_program* p = bpf_object__find_program_by_name(Obj(info.Env()), name.c_str());
    if (!p) ThrowBpf(info.Env(), "bpf_object__find_program_by_name", ENOENT, name);
    return p;
  }

  bpf_map* FindMap(const Napi::CallbackInfo& info) {
    std::string name = ArgStr(info, 0, "name");
    bpf_map* m = bpf_object__find_map_by_name(Obj(info.Env()), name.c_str());
    if (!m) ThrowBpf(info.Env(), "bpf_object__find_map_by_name", ENOENT, name);
    return m;
  }

  // Copies value over the variable's bytes in the .rodata image libbpf will create the map from.
  void SetRodata(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string name = ArgStr(info, 0, "name");
    Napi::Buffer<uint8_t> value = ArgBuf(info, 1, "value");
    bpf_object* obj = Obj(env);
    if (loaded_) ThrowBpf(env, "setRodata", EBUSY, name + ": object already loaded");

    // Offsets are only right after open: libbpf fixes up DATASEC sizes/offsets (clang leaves them 0)
    // while opening.
    btf* b = bpf_object__btf(obj);
    int secId = b ? btf__find_by_name_kind(b, ".rodata", BTF_KIND_DATASEC) : -ENOENT;
    if (secId < 0) ThrowBpf(env, "btf__find_by_name_kind", -secId, ".rodata");
    const btf_type* sec = btf__type_by_id(b, secId);
    const btf_var_secinfo* vsi = btf_var_secinfos(sec);
    const btf_var_secinfo* found = nullptr;
    for (unsigned i = 0; i < btf_vlen(sec); i++, vsi++) {
      const btf_type* var = btf__type_by_id(b, vsi->type);
      const char* varName = var ? btf__name_by_offset(b, var->name_off) : nullptr;
      if (varName && name == varName) { found = vsi; break; }
    }
    if (!found) ThrowBpf(env, "setRodata", ENOENT, name + " is not a .rodata variable");
    if (found->size != value.Length())
      ThrowBpf(env, "setRodata", EINVAL,
               name + " is " + std::to_string(found->size) + " bytes, value is " + std::to_string(value.Length()));

    // The internal map is "<obj name prefix>.rodata"; ".rodata.str1.1" and friends are other maps.
    bpf_map* map = nullptr;
    bpf_map* m;
    bpf_object__for_each_map(m, obj) {
      const char* n = bpf_map__name(m);
      size_t len = std::strlen(n);
      if (bpf_map__is_internal(m) && len >= 7 && std::strcmp(n + len - 7, ".rodata") == 0) { map = m; break; }
    }
    if (!map) ThrowBpf(env, "setRodata", ENOENT, "no .rodata map");
    size_t size = 0;
    // libbpf 1.1 returns const, but this is the writable mmap'ed image used to create the map at
    // load time (skeletons write through the same pointer).
    auto* image = static_cast<uint8_t*>(const_cast<void*>(bpf_map__initial_value(map, &size)));
    if (!image || found->offset + found->size > size) ThrowBpf(env, "bpf_map__initial_value", EINVAL, name);
    std::memcpy(image + found->offset, value.Data(), value.Length());
  }

  void ReuseMap(const Napi::CallbackInfo& info) {
    bpf_map* m = FindMap(info);
    // libbpf dups the fd: the handle stays the caller's to close.
    int err = bpf_map__reuse_fd(m, ArgHandle(info, 1, FdKind::kMap, "map", "bpf_map__reuse_fd"));
    if (err) ThrowBpf(info.Env(), "bpf_map__reuse_fd", -err, bpf_map__name(m));
  }

  void Load(const Napi::CallbackInfo& info) {
    bpf_object* obj = Obj(info.Env());
    // On rejection libbpf retries the program load with a log buffer and prints the verifier log
    // at WARN level ("-- BEGIN PROG LOAD LOG --"); capturing the print is how we get at it.
    LogCapture log;
    int err = bpf_object__load(obj);
    if (err) ThrowLoad(info.Env(), "bpf_object__load", -err, path_, log.log());
    loaded_ = true;
    ReleaseBssImages(obj);
  }

  // libbpf 1.1 keeps each global-data map's initial image in a shared anonymous mapping for the
  // object's life, and loading touches every page of it: the classifier's 512 KiB .bss (its
  // socket slots) stayed resident in the agent as zeros the kernel map already holds. Once
  // loaded, nothing reads the image of a .bss (setRodata writes .rodata before load), so its
  // pages are handed back; the mapping stays, and reads as zeros, until libbpf unmaps it at
  // close. Where a later libbpf maps the kernel map itself there, MADV_REMOVE fails and nothing
  // changes: ignored.
  static void ReleaseBssImages(bpf_object* obj) {
    bpf_map* m;
    bpf_object__for_each_map(m, obj) {
      const char* n = bpf_map__name(m);
      size_t len = std::strlen(n);
      if (!bpf_map__is_internal(m) || len < 4 || std::strcmp(n + len - 4, ".bss") != 0) continue;
      size_t size = 0;
      void* image = const_cast<void*>(bpf_map__initial_value(m, &size));
      long page = sysconf(_SC_PAGESIZE);
      if (image && page > 0 && size >= static_cast<size_t>(page))
        madvise(image, size / page * page, MADV_REMOVE);
    }
  }

  Napi::Value Prog(const Napi::CallbackInfo& info) {
    bpf_program* p = FindProg(info);
    int fd = bpf_program__fd(p);
    if (fd < 0) ThrowBpf(info.Env(), "bpf_program__fd", -fd, bpf_program__name(p));
    return DupHandle(info.Env(), FdKind::kProg, fd, std::string("prog ") + bpf_program__name(p));
  }

  Napi::Value MapHandle(const Napi::CallbackInfo& info) {
    bpf_map* m = FindMap(info);
    int fd = bpf_map__fd(m);
    if (fd < 0) ThrowBpf(info.Env(), "bpf_map__fd", -fd, bpf_map__name(m));
    return DupHandle(info.Env(), FdKind::kMap, fd, std::string("map ") + bpf_map__name(m));
  }

  // The map as this object defines it (before or after load): what a pinned map must match to be reused.
  Napi::Value MapDef(const Napi::CallbackInfo& info) {
    bpf_map* m = FindMap(info);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("type", static_cast<uint32_t>(bpf_map__type(m)));
    o.Set("keySize", bpf_map__key_size(m));
    o.Set("valueSize", bpf_map__value_size(m));
    o.Set("maxEntries", bpf_map__max_entries(m));
    return o;
  }

  Napi::Value AttachTracing(const Napi::CallbackInfo& info) {
    bpf_program* p = FindProg(info);
    LogCapture log;
    bpf_link* link = bpf_program__attach(p);
    if (!link) {
      int err = errno;
      ThrowBpf(info.Env(), "bpf_program__attach", err, bpf_program__name(p), log.log());
    }
    return TakeLink(info.Env(), link, std::string("tracing link ") + bpf_program__name(p));
  }

  Napi::Value AttachIter(const Napi::CallbackInfo& info) {
    bpf_program* p = FindProg(info);
    LogCapture log;
    bpf_link* link = bpf_program__attach_iter(p, nullptr);
    if (!link) {
      int err = errno;
      ThrowBpf(info.Env(), "bpf_program__attach_iter", err, bpf_program__name(p), log.log());
    }
    return TakeLink(info.Env(), link, std::string("iter link ") + bpf_program__name(p));
  }

  // A cgroup link (BPF_LINK_CREATE): the attach type is the one the program's section names
  // (cgroup/connect4, sockops, ...). The cgroup folder's fd is only needed for the call.
  Napi::Value AttachCgroup(const Napi::CallbackInfo& info) {
    bpf_program* p = FindProg(info);
    std::string dir = ArgStr(info, 1, "cgroupDir");
    UniqueFd cg(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (cg.get() < 0) ThrowBpf(info.Env(), "open", errno, dir);
    LogCapture log;
    bpf_link* link = bpf_program__attach_cgroup(p, cg.get());
    if (!link) {
      int err = errno;
      ThrowBpf(info.Env(), "bpf_program__attach_cgroup", err, std::string(bpf_program__name(p)) + " on " + dir, log.log());
    }
    return TakeLink(info.Env(), link, std::string("cgroup link ") + bpf_program__name(p) + " on " + dir);
  }

  // Closes the object's own prog/map fds; programs and maps stay loaded while a handle, link or pin
  // refers to them.
  void Close(const Napi::CallbackInfo&) { obj_.reset(); }

  std::unique_ptr<bpf_object, ObjectCloser> obj_;
  std::string path_;
  bool loaded_ = false;
};

namespace {

Napi::Value OpenObject(const Napi::CallbackInfo& info) {
  ArgStr(info, 0, "file");
  return info.Env().GetInstanceData<AddonData>()->bpfObject.New({info[0]});
}

}  // namespace

void InitObject(Napi::Env env, Napi::Object exports) {
  env.GetInstanceData<AddonData>()->bpfObject = Napi::Persistent(BpfObject::Define(env));
  exports.Set("openObject", Napi::Function::New<OpenObject>(env, "openObject"));
}

}  // namespace sslwall
