// Module entry: one export per libbpf operation (the typed surface is native/index.ts).
#include "common.h"

namespace sslwall {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstallLibbpfPrint();
  env.SetInstanceData(new AddonData());
  InitHandles(env, exports);
  InitObject(env, exports);
  InitMaps(env, exports);
  InitLinks(env, exports);
  InitSys(env, exports);
  InitRingBuffer(env, exports);
  return exports;
}

}  // namespace sslwall

namespace {
Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return sslwall::Init(env, exports); }
}  // namespace

NODE_API_MODULE(sslwall_native, InitModule)
