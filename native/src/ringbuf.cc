// RingBufferPoller: a native thread in ring_buffer__poll that hands records to a JS callback
// through a ThreadSafeFunction.
#include <bpf/libbpf.h>
#include <fcntl.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "common.h"

namespace sslwall {

namespace {

using Record = std::vector<uint8_t>;
using Batch = std::vector<Record>;  // everything one ring_buffer__poll consumed
struct PollState;
using StateRef = std::shared_ptr<PollState>;
void DeliverBatch(Napi::Env env, Napi::Function cb, StateRef* ctx, Batch* batch);
using Tsfn = Napi::TypedThreadSafeFunction<StateRef, Batch, DeliverBatch>;

// Bounded so a slow JS consumer pushes back into the ring buffer (whose producers then fail to
// reserve and count the drop) instead of growing this process without limit.
constexpr size_t kMaxQueuedBatches = 64;
constexpr int kPollTimeoutMs = 100;  // also how long close() may wait for the thread to notice

struct RingBufferFree {
  void operator()(ring_buffer* rb) const { ring_buffer__free(rb); }
};

// Shared by the JS object, the polling thread and the TSFN finalizer. The finalizer runs either
// after close() aborted the TSFN or at environment teardown with the poller still open; whichever
// of close(), the object's destructor and the finalizer comes first stops the thread.
struct PollState {
  UniqueFd mapFd;  // a dup of the caller's handle: the map outlives whatever JS does with that
  std::unique_ptr<ring_buffer, RingBufferFree> rb;
  Tsfn tsfn;
  std::thread thread;
  std::atomic<bool> stop{false};
  bool stopped = false;    // JS thread only
  bool tsfnLive = true;    // JS thread only; false once the finalizer ran
  Batch pending;           // polling thread only

  static int OnSample(void* ctx, void* data, size_t size) {
    auto* self = static_cast<PollState*>(ctx);
    auto* bytes = static_cast<const uint8_t*>(data);
    self->pending.emplace_back(bytes, bytes + size);  // the sample is only valid during this call
    return 0;
  }

  void Run() {
    while (!stop.load()) {
      int n = ring_buffer__poll(rb.get(), kPollTimeoutMs);
      if (n == -EINTR) continue;
      if (n < 0) {
        std::fprintf(stderr, "sslwall_native: ring_buffer__poll: %s; polling stopped\n", std::strerror(-n));
        return;
      }
      if (pending.empty()) continue;
      auto* batch = new Batch(std::move(pending));
      pending.clear();
      // Blocks while the queue is full; returns napi_closing once close() aborted the TSFN.
      if (tsfn.BlockingCall(batch) != napi_ok) {
        delete batch;
        return;
      }
    }
  }

  void Stop() {
    if (stopped) return;
    stopped = true;
    stop.store(true);
    // Abort (not Release): it wakes a BlockingCall waiting on a full queue, and batches still
    // queued are handed to DeliverBatch with no env and freed undelivered.
    if (tsfnLive) tsfn.Abort();
    if (thread.joinable()) thread.join();
    rb.reset();
  }
};

void DeliverBatch(Napi::Env env, Napi::Function cb, StateRef* ctx, Batch* batch) {
  std::unique_ptr<Batch> owned(batch);
  if (env == nullptr || cb.IsEmpty()) return;
  for (const Record& r : *owned) {
    if ((*ctx)->stopped) return;  // the callback for an earlier record called close()
    cb.Call({Napi::Buffer<uint8_t>::Copy(env, r.data(), r.size())});
  }
}

class RingBufferPoller : public Napi::ObjectWrap<RingBufferPoller> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RingBufferPoller", {InstanceMethod<&RingBufferPoller::Close>("close")});
  }

  explicit RingBufferPoller(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<RingBufferPoller>(info), state_(std::make_shared<PollState>()) {
    Napi::Env env = info.Env();
    int fd = ArgHandle(info, 0, FdKind::kMap, "map", "ring_buffer__new");
    Napi::Function cb = ArgFn(info, 1, "cb");
    state_->mapFd.reset(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (state_->mapFd.get() < 0) ThrowBpf(env, "fcntl(F_DUPFD_CLOEXEC)", errno, "ring buffer map");
    LogCapture log;
    ring_buffer* rb = ring_buffer__new(state_->mapFd.get(), &PollState::OnSample, state_.get(), nullptr);
    if (!rb) {
      int err = errno;
      ThrowBpf(env, "ring_buffer__new", err, "", log.log());
    }
    state_->rb.reset(rb);
    // While open the TSFN holds the event loop, as an active socket or timer does; Abort in close()
    // lets it go.
    state_->tsfn = Tsfn::New(env, cb, "sslwall.ringbuf", kMaxQueuedBatches, 1, new StateRef(state_),
                             [](Napi::Env, void*, StateRef* ctx) {
                               (*ctx)->tsfnLive = false;
                               (*ctx)->Stop();
                               delete ctx;
                             });
    state_->thread = std::thread(&PollState::Run, state_.get());
    Ref();  // an open poller cannot be collected out from under its callback; close() unrefs
    open_ = true;
  }

  ~RingBufferPoller() override { state_->Stop(); }

 private:
  void Close(const Napi::CallbackInfo&) {
    if (!open_) return;
    open_ = false;
    state_->Stop();
    Unref();
  }

  StateRef state_;
  bool open_ = false;
};

Napi::Value RingBufferPoll(const Napi::CallbackInfo& info) {
  return info.Env().GetInstanceData<AddonData>()->ringBufferPoller.New({info[0], info[1]});
}

}  // namespace

void InitRingBuffer(Napi::Env env, Napi::Object exports) {
  env.GetInstanceData<AddonData>()->ringBufferPoller = Napi::Persistent(RingBufferPoller::Define(env));
  exports.Set("ringBufferPoll", Napi::Function::New<RingBufferPoll>(env, "ringBufferPoll"));
}

}  // namespace sslwall
