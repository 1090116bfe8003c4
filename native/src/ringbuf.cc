// RingBufferPoller: a native thread, asleep in epoll_wait until records come, that hands them to a JS callback
// through a ThreadSafeFunction.
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

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

struct RingBufferFree {
  void operator()(ring_buffer* rb) const { ring_buffer__free(rb); }
};

// Shared by the JS object, the polling thread and the TSFN finalizer. The finalizer runs either
// after close() aborted the TSFN or at environment teardown with the poller still open; whichever
// of close(), the object's destructor and the finalizer comes first stops the thread.
struct PollState {
  UniqueFd mapFd;  // a dup of the caller's handle: the map outlives whatever JS does with that
  std::unique_ptr<ring_buffer, RingBufferFree> rb;
  // The thread sleeps in epoll_wait on these two, with no timeout: the ring's own epoll set
  // (readable when records are waiting) and stopFd, which Stop() writes. A timed poll woke the
  // idle agent 10 times a second for nothing (docs/bench.md, agent_idle). Not the ring's set
  // alone with stopFd added: ring_buffer__poll reads every event's data as a ring index.
  UniqueFd epollFd;
  UniqueFd stopFd;
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
    // Named, so that /proc/PID/task/*/comm tells it from node's threads (the agent_idle bench
    // lists wake-ups by thread; a test checks that an idle poller does not wake).
    pthread_setname_np(pthread_self(), "sslwall-ringbuf");
    epoll_event ev[2];
    while (!stop.load()) {
      int ready = ::epoll_wait(epollFd.get(), ev, 2, -1);
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) {
        std::fprintf(stderr, "sslwall_native: epoll_wait: %s; polling stopped\n", std::strerror(errno));
        return;
      }
      if (stop.load()) return;
      int n = ring_buffer__consume(rb.get());
      if (n < 0) {
        std::fprintf(stderr, "sslwall_native: ring_buffer__consume: %s; polling stopped\n", std::strerror(-n));
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
    uint64_t one = 1;
    if (stopFd.get() >= 0 && ::write(stopFd.get(), &one, sizeof one) < 0) std::fprintf(stderr, "sslwall_native: eventfd write: %s\n", std::strerror(errno));
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
    state_->epollFd.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (state_->epollFd.get() < 0) ThrowBpf(env, "epoll_create1", errno, "ring buffer poller");
    state_->stopFd.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (state_->stopFd.get() < 0) ThrowBpf(env, "eventfd", errno, "ring buffer poller");
    for (int fd : {ring_buffer__epoll_fd(rb), state_->stopFd.get()}) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = fd;
      if (::epoll_ctl(state_->epollFd.get(), EPOLL_CTL_ADD, fd, &ev) < 0) ThrowBpf(env, "epoll_ctl", errno, "ring buffer poller");
    }
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
