// Map element operations on a map handle. Sizes come from the kernel (bpf_obj_get_info_by_fd) on
// every call: one syscall, and no cache to keep in step with the handle.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "common.h"

namespace sslwall {

namespace {

struct MapShape {
  uint32_t keySize;
  uint32_t valueSize;  // what one lookup/update moves: value_size, or the per-CPU array of them
  uint32_t type;
};

MapShape Shape(Napi::Env env, int fd) {
  bpf_map_info mi{};
  uint32_t len = sizeof(mi);
  int err = bpf_obj_get_info_by_fd(fd, &mi, &len);
  if (err) ThrowBpf(env, "bpf_obj_get_info_by_fd", -err, "map");
  MapShape s{mi.key_size, mi.value_size, mi.type};
  switch (mi.type) {
    case BPF_MAP_TYPE_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_ARRAY:
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE: {
      // From user space a per-CPU value is one slot per *possible* CPU, each rounded up to 8 bytes.
      int ncpus = libbpf_num_possible_cpus();
      if (ncpus < 0) ThrowBpf(env, "libbpf_num_possible_cpus", -ncpus);
      s.valueSize = ((mi.value_size + 7) & ~7u) * static_cast<uint32_t>(ncpus);
      break;
    }
    default:
      break;
  }
  return s;
}

void CheckSize(Napi::Env env, const char* op, const char* what, size_t got, size_t want) {
  if (got != want)
    ThrowBpf(env, op, EINVAL, std::string(what) + " is " + std::to_string(got) + " bytes, map wants " + std::to_string(want));
}

Napi::Value MapLookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgHandle(info, 0, FdKind::kMap, "map", "bpf_map_lookup_elem");
  Napi::Buffer<uint8_t> key = ArgBuf(info, 1, "key");
  MapShape s = Shape(env, fd);
  CheckSize(env, "bpf_map_lookup_elem", "key", key.Length(), s.keySize);
  Napi::Buffer<uint8_t> value = Napi::Buffer<uint8_t>::New(env, s.valueSize);
  int err = bpf_map_lookup_elem(fd, key.Data(), value.Data());
  if (err == -ENOENT) return env.Null();
  if (err) ThrowBpf(env, "bpf_map_lookup_elem", -err);
  return value;
}

void MapUpdate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgHandle(info, 0, FdKind::kMap, "map", "bpf_map_update_elem");
  Napi::Buffer<uint8_t> key = ArgBuf(info, 1, "key");
  Napi::Buffer<uint8_t> value = ArgBuf(info, 2, "value");
  uint64_t flags = info[3].IsUndefined() ? uint64_t{BPF_ANY} : ArgU32(info, 3, "flags");
  MapShape s = Shape(env, fd);
  CheckSize(env, "bpf_map_update_elem", "key", key.Length(), s.keySize);
  CheckSize(env, "bpf_map_update_elem", "value", value.Length(), s.valueSize);
  int err = bpf_map_update_elem(fd, key.Data(), value.Data(), flags);
  if (err) ThrowBpf(env, "bpf_map_update_elem", -err);
}

Napi::Value MapDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgHandle(info, 0, FdKind::kMap, "map", "bpf_map_delete_elem");
  Napi::Buffer<uint8_t> key = ArgBuf(info, 1, "key");
  CheckSize(env, "bpf_map_delete_elem", "key", key.Length(), Shape(env, fd).keySize);
  int err = bpf_map_delete_elem(fd, key.Data());
  if (err == -ENOENT) return Napi::Boolean::New(env, false);
  if (err) ThrowBpf(env, "bpf_map_delete_elem", -err);
  return Napi::Boolean::New(env, true);
}

// The map types whose batch lookup the kernel walks bucket by bucket (hash) or index by index
// (array): a dump in a few syscalls, where get_next_key + lookup take two an entry.
bool Batchable(uint32_t type) {
  switch (type) {
    case BPF_MAP_TYPE_HASH:
    case BPF_MAP_TYPE_LRU_HASH:
    case BPF_MAP_TYPE_PERCPU_HASH:
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
    case BPF_MAP_TYPE_ARRAY:
    case BPF_MAP_TYPE_PERCPU_ARRAY:
      return true;
    default:
      return false;
  }
}

void AppendPair(Napi::Env env, Napi::Array& out, const uint8_t* key, size_t keySize, const uint8_t* value, size_t valueSize) {
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(0u, Napi::Buffer<uint8_t>::Copy(env, key, keySize));
  pair.Set(1u, Napi::Buffer<uint8_t>::Copy(env, value, valueSize));
  out.Set(out.Length(), pair);
}

// Every entry by batch lookups, handed to each(keys, values, count) one batch at a time; false,
// having read nothing, when the kernel refuses batch lookups on this map (EINVAL, ENOTSUPP: an
// older kernel). The cursor is opaque: a bucket index (u32) for hash maps, a key for the others,
// so entries deleted or added meanwhile never make a hash map repeat one. A bucket holding more
// entries than the batch answers ENOSPC: the batch grows and the same bucket is read again.
template <typename Each>
bool WalkBatches(Napi::Env env, int fd, const MapShape& s, Each each) {
  uint32_t batch = 4096;
  std::vector<uint8_t> keys, values;
  std::vector<uint8_t> cursor(std::max<size_t>(s.keySize, 8)), next(cursor.size());
  bpf_map_batch_opts opts{};
  opts.sz = sizeof(opts);
  for (bool first = true;;) {
    keys.resize(size_t{batch} * s.keySize);
    values.resize(size_t{batch} * s.valueSize);
    uint32_t count = batch;
    int err = bpf_map_lookup_batch(fd, first ? nullptr : cursor.data(), next.data(), keys.data(), values.data(), &count, &opts);
    if (err == -ENOSPC && count == 0) {
      batch *= 2;  // one bucket holds more than a batch
      continue;
    }
    if (first && (err == -EINVAL || err == -ENOTSUP || err == -EOPNOTSUPP || err == -524 /* ENOTSUPP */)) return false;
    if (err && err != -ENOENT) ThrowBpf(env, "bpf_map_lookup_batch", -err);
    each(keys.data(), values.data(), count);
    if (err == -ENOENT) return true;  // the last batch
    cursor.swap(next);
    first = false;
  }
}

// Every entry, appended to keys and values (fixed-size records); false as WalkBatches.
bool ReadBatched(Napi::Env env, int fd, const MapShape& s, std::vector<uint8_t>& keys, std::vector<uint8_t>& values, uint32_t& total) {
  total = 0;
  return WalkBatches(env, fd, s, [&](const uint8_t* k, const uint8_t* v, uint32_t count) {
    keys.insert(keys.end(), k, k + size_t{count} * s.keySize);
    values.insert(values.end(), v, v + size_t{count} * s.valueSize);
    total += count;
  });
}

// Keys and values in two buffers of fixed-size records: a scan that keeps few entries (the
// agent's start looking for an older build's IPv4 flows) makes no JS object per entry.
Napi::Value MapLookupBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgHandle(info, 0, FdKind::kMap, "map", "bpf_map_lookup_batch");
  MapShape s = Shape(env, fd);
  std::vector<uint8_t> keys, values;
  uint32_t total = 0;
  if (!Batchable(s.type) || !ReadBatched(env, fd, s, keys, values, total))
    ThrowBpf(env, "bpf_map_lookup_batch", EOPNOTSUPP, "this map or kernel has no batch lookup; use mapDump");
  Napi::Object out = Napi::Object::New(env);
  out.Set("keys", Napi::Buffer<uint8_t>::Copy(env, keys.data(), keys.size()));
  out.Set("values", Napi::Buffer<uint8_t>::Copy(env, values.data(), values.size()));
  out.Set("count", Napi::Number::New(env, total));
  out.Set("keySize", Napi::Number::New(env, s.keySize));
  out.Set("valueSize", Napi::Number::New(env, s.valueSize));
  return out;
}

Napi::Value MapDump(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgHandle(info, 0, FdKind::kMap, "map", "bpf_map_get_next_key");
  MapShape s = Shape(env, fd);
  Napi::Array out = Napi::Array::New(env);
  std::vector<uint8_t> keys, values;
  uint32_t total = 0;
  if (Batchable(s.type) && ReadBatched(env, fd, s, keys, values, total)) {
    for (uint32_t i = 0; i < total; i++)
      AppendPair(env, out, &keys[size_t{i} * s.keySize], s.keySize, &values[size_t{i} * s.valueSize], s.valueSize);
    return out;
  }
  std::vector<uint8_t> key(s.keySize), next(s.keySize), value(s.valueSize);
  // When the previous key is deleted under us, a hash map's get_next_key restarts from the first
  // key; remembering what was already emitted keeps the result free of duplicates.
  std::set<std::string> seen;
  for (bool first = true;; first = false) {
    int err = bpf_map_get_next_key(fd, first ? nullptr : key.data(), next.data());
    if (err == -ENOENT) break;
    if (err) ThrowBpf(env, "bpf_map_get_next_key", -err);
    key.swap(next);
    if (!seen.emplace(key.begin(), key.end()).second) continue;
    err = bpf_map_lookup_elem(fd, key.data(), value.data());
    if (err == -ENOENT) continue;  // deleted between get_next_key and lookup
    if (err) ThrowBpf(env, "bpf_map_lookup_elem", -err);
    AppendPair(env, out, key.data(), key.size(), value.data(), value.size());
  }
  return out;
}

// How many entries a map holds, counted from the kernel's batches (a few syscalls, no JS
// objects): the health report's live-flow count, where mapDump would copy every entry into JS
// (two syscalls and three objects each: ~30 ms for 10,000 flows, every 30 s on an idle agent).
Napi::Value MapCount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgHandle(info, 0, FdKind::kMap, "map", "bpf_map_lookup_batch");
  MapShape s = Shape(env, fd);
  double total = 0;
  if (!WalkBatches(env, fd, s, [&](const uint8_t*, const uint8_t*, uint32_t count) { total += count; }))
    ThrowBpf(env, "bpf_map_lookup_batch", EOPNOTSUPP, "this map or kernel has no batch lookup");
  return Napi::Number::New(env, total);
}

void MapUpdateBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgHandle(info, 0, FdKind::kMap, "map", "bpf_map_update_batch");
  Napi::Buffer<uint8_t> keys = ArgBuf(info, 1, "keys");
  Napi::Buffer<uint8_t> values = ArgBuf(info, 2, "values");
  uint32_t count = ArgU32(info, 3, "count");
  MapShape s = Shape(env, fd);
  CheckSize(env, "bpf_map_update_batch", "keys", keys.Length(), size_t{count} * s.keySize);
  CheckSize(env, "bpf_map_update_batch", "values", values.Length(), size_t{count} * s.valueSize);
  bpf_map_batch_opts opts{};
  opts.sz = sizeof(opts);
  uint32_t done = count;  // in: how many; out: how many the kernel applied before failing
  int err = bpf_map_update_batch(fd, keys.Data(), values.Data(), &done, &opts);
  if (err) ThrowBpf(env, "bpf_map_update_batch", -err, std::to_string(done) + " of " + std::to_string(count) + " applied");
}

}  // namespace

void InitMaps(Napi::Env env, Napi::Object exports) {
  exports.Set("mapLookup", Napi::Function::New<MapLookup>(env, "mapLookup"));
  exports.Set("mapUpdate", Napi::Function::New<MapUpdate>(env, "mapUpdate"));
  exports.Set("mapDelete", Napi::Function::New<MapDelete>(env, "mapDelete"));
  exports.Set("mapDump", Napi::Function::New<MapDump>(env, "mapDump"));
  exports.Set("mapCount", Napi::Function::New<MapCount>(env, "mapCount"));
  exports.Set("mapLookupBatch", Napi::Function::New<MapLookupBatch>(env, "mapLookupBatch"));
  exports.Set("mapUpdateBatch", Napi::Function::New<MapUpdateBatch>(env, "mapUpdateBatch"));
}

}  // namespace sslwall
