// The NCCL communicator (include/towerrec/comm.h): one rank per GPU, CUDA
// device memory, collectives on the communicator's own stream.
//
// Bootstrap: rank 0 makes the NCCL unique ID, the MPI communicator broadcasts
// it, and every rank calls ncclCommInitRank on its device. Every call waits
// for its stream, so a collective has finished when it returns (the op
// contract's copies and ops run on the backend's own stream, which the caller
// synchronises before handing buffers over). Every CUDA and NCCL status is
// checked; a failure throws a CommError naming the rank, the call and NCCL's
// message.
#include <cuda_runtime.h>
#include <nccl.h>

#include "towerrec/comm.h"

namespace towerrec {

namespace {

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Communicator& bootstrap, int device)
      : bootstrap_(bootstrap), rank_(bootstrap.rank()), size_(bootstrap.size()), device_(device) {
    int n = 0;
    cuda(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    if (device_ < 0 || device_ >= n)
      throw CommError(where() + "CUDA device " + std::to_string(device_) + " does not exist (" +
                      std::to_string(n) + " on this node; one rank per GPU)");
    cuda(cudaSetDevice(device_), "cudaSetDevice");
    ncclUniqueId id{};
    if (rank_ == 0) nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    bootstrap_.broadcast(&id, sizeof id, 0);
    nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    cuda(cudaMalloc(&scratch_, sizeof(float)), "cudaMalloc");
  }
  ~NcclCommunicator() override {
    if (scratch_) cudaFree(scratch_);
    if (stream_) cudaStreamDestroy(stream_);
    if (comm_) ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  CommMemory memory() const override { return CommMemory::kDevice; }
  std::string name() const override { return "nccl"; }

  void all_reduce_sum(float* buf, int64_t n) override {
    TOWERREC_CHECK(n >= 0, "all_reduce_sum: negative size");
    cuda(cudaSetDevice(device_), "cudaSetDevice");
    nccl(ncclAllReduce(buf, buf, static_cast<size_t>(n), ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce");
    sync("ncclAllReduce");
    bytes_sent_ += n * static_cast<int64_t>(sizeof(float));
  }
  // Queued on the communicator's stream; the wait waits for the stream (this
  // sum and every one queued before it).
  int64_t start_all_reduce_sum(float* buf, int64_t n) override {
    TOWERREC_CHECK(n >= 0, "all_reduce_sum: negative size");
    cuda(cudaSetDevice(device_), "cudaSetDevice");
    nccl(ncclAllReduce(buf, buf, static_cast<size_t>(n), ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce");
    bytes_sent_ += n * static_cast<int64_t>(sizeof(float));
    return ++last_handle_;
  }
  void wait_all_reduce(int64_t handle) override {
    TOWERREC_CHECK(handle > 0 && handle <= last_handle_, "wait_all_reduce: no such all-reduce started");
    cuda(cudaSetDevice(device_), "cudaSetDevice");
    sync("ncclAllReduce");
  }
  // Host values go over the bootstrap (MPI) communicator.
  void all_reduce_sum_host(double* buf, int64_t n) override { bootstrap_.all_reduce_sum_host(buf, n); }
  void all_gather(const void* send, int64_t bytes, void* recv) override {
    TOWERREC_CHECK(bytes >= 0, "all_gather: negative size");
    cuda(cudaSetDevice(device_), "cudaSetDevice");
    nccl(ncclAllGather(send, recv, static_cast<size_t>(bytes), ncclChar, comm_, stream_), "ncclAllGather");
    sync("ncclAllGather");
    bytes_sent_ += bytes;
  }
  // One broadcast per rank's segment, grouped into one launch.
  void all_gatherv(const void* send, const std::vector<int64_t>& counts, void* recv) override {
    TOWERREC_CHECK(static_cast<int>(counts.size()) == size_, "all_gatherv: one count per rank");
    cuda(cudaSetDevice(device_), "cudaSetDevice");
    nccl(ncclGroupStart(), "ncclGroupStart");
    int64_t off = 0;
    for (int r = 0; r < size_; ++r) {
      const int64_t c = counts[static_cast<size_t>(r)];
      TOWERREC_CHECK(c >= 0, "all_gatherv: negative count");
      char* dst = static_cast<char*>(recv) + off;
      nccl(ncclBroadcast(r == rank_ ? send : dst, dst, static_cast<size_t>(c), ncclChar, r, comm_, stream_),
           "ncclBroadcast");
      off += c;
    }
    nccl(ncclGroupEnd(), "ncclGroupEnd");
    sync("all_gatherv");
    bytes_sent_ += counts[static_cast<size_t>(rank_)];
  }
  // Point-to-point sends and receives to and from every peer, grouped.
  void all_to_allv(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                   const std::vector<int64_t>& recv_counts) override {
    TOWERREC_CHECK(static_cast<int>(send_counts.size()) == size_ &&
                       static_cast<int>(recv_counts.size()) == size_,
                   "all_to_allv: one count per rank");
    cuda(cudaSetDevice(device_), "cudaSetDevice");
    nccl(ncclGroupStart(), "ncclGroupStart");
    int64_t so = 0, ro = 0;
    for (int r = 0; r < size_; ++r) {
      const auto sc = static_cast<size_t>(send_counts[static_cast<size_t>(r)]);
      const auto rc = static_cast<size_t>(recv_counts[static_cast<size_t>(r)]);
      if (sc) nccl(ncclSend(static_cast<const char*>(send) + so, sc, ncclChar, r, comm_, stream_), "ncclSend");
      if (rc) nccl(ncclRecv(static_cast<char*>(recv) + ro, rc, ncclChar, r, comm_, stream_), "ncclRecv");
      so += send_counts[static_cast<size_t>(r)];
      ro += recv_counts[static_cast<size_t>(r)];
    }
    nccl(ncclGroupEnd(), "ncclGroupEnd");
    sync("all_to_allv");
    bytes_sent_ += so - send_counts[static_cast<size_t>(rank_)];
  }
  void broadcast(void* buf, int64_t bytes, int root) override {
    TOWERREC_CHECK(root >= 0 && root < size_ && bytes >= 0, "broadcast: bad root or size");
    cuda(cudaSetDevice(device_), "cudaSetDevice");
    nccl(ncclBroadcast(buf, buf, static_cast<size_t>(bytes), ncclChar, root, comm_, stream_), "ncclBroadcast");
    sync("ncclBroadcast");
    if (rank_ == root) bytes_sent_ += bytes;
  }
  // An all-reduce of one float: it returns once every rank has reached it.
  void barrier() override {
    cuda(cudaSetDevice(device_), "cudaSetDevice");
    nccl(ncclAllReduce(scratch_, scratch_, 1, ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce");
    sync("barrier");
  }
  void abort(int status) override {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    bootstrap_.abort(status);
  }

 private:
  std::string where() const {
    return "rank " + std::to_string(rank_) + " of " + std::to_string(size_) + " (CUDA device " +
           std::to_string(device_) + "): ";
  }
  void cuda(cudaError_t rc, const char* what) const {
    if (rc != cudaSuccess) throw CommError(where() + what + " failed: " + cudaGetErrorString(rc));
  }
  void nccl(ncclResult_t rc, const char* what) const {
    if (rc != ncclSuccess) throw CommError(where() + what + " failed: " + ncclGetErrorString(rc));
  }
  // Waits for the stream, and polls the communicator for asynchronous errors
  // (a peer that died shows here rather than as a hang).
  void sync(const char* what) const {
    for (;;) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) cuda(q, what);
      ncclResult_t async = ncclSuccess;
      nccl(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
      if (async != ncclSuccess && async != ncclInProgress) nccl(async, what);
    }
  }

  Communicator& bootstrap_;
  int rank_, size_, device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  float* scratch_ = nullptr;
  int64_t last_handle_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device) {
  return std::make_unique<NcclCommunicator>(bootstrap, device < 0 ? local_rank() : device);
}

}  // namespace towerrec
