// The MPI communicator (include/towerrec/comm.h): MPI_COMM_WORLD, host memory.
//
// Each collective is started non-blocking (MPI_Iallreduce, ...) and polled
// with MPI_Test until it completes or the timeout passes; a rank that died,
// stopped on an error or took another code path then shows as a CommError
// naming this rank and the call, instead of a process that hangs for ever.
// Polling spins briefly, then sleeps in short naps so a waiting rank leaves
// the cores to the ranks still computing.
// The C API only: no MPI C++ bindings (deprecated, a library of their own).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>
#include <unordered_map>
#include <vector>

#include "towerrec/comm.h"

namespace towerrec {

namespace {

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_s) : timeout_s_(timeout_s) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        throw CommError("MPI_Init_thread failed");
      owns_mpi_ = true;
    }
    // Errors come back as codes (then a CommError), not as an abort inside MPI.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiCommunicator() override {
    if (!owns_mpi_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  CommMemory memory() const override { return CommMemory::kHost; }
  std::string name() const override { return "mpi"; }

  void all_reduce_sum(float* buf, int64_t n) override {
    TOWERREC_CHECK(n >= 0, "all_reduce_sum: negative size");
    for (int64_t at = 0; at < n; at += kChunk) {
      const int c = static_cast<int>(std::min<int64_t>(kChunk, n - at));
      MPI_Request req;
      check(MPI_Iallreduce(MPI_IN_PLACE, buf + at, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req), "all_reduce");
      wait(req, "all_reduce");
    }
    bytes_sent_ += n * static_cast<int64_t>(sizeof(float));
  }
  int64_t start_all_reduce_sum(float* buf, int64_t n) override {
    TOWERREC_CHECK(n >= 0, "all_reduce_sum: negative size");
    std::vector<MPI_Request>& reqs = started_[++last_handle_];
    for (int64_t at = 0; at < n; at += kChunk) {
      const int c = static_cast<int>(std::min<int64_t>(kChunk, n - at));
      reqs.emplace_back();
      check(MPI_Iallreduce(MPI_IN_PLACE, buf + at, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &reqs.back()),
            "all_reduce");
    }
    bytes_sent_ += n * static_cast<int64_t>(sizeof(float));
    return last_handle_;
  }
  void wait_all_reduce(int64_t handle) override {
    const auto it = started_.find(handle);
    TOWERREC_CHECK(it != started_.end(), "wait_all_reduce: no such all-reduce started");
    for (MPI_Request& req : it->second) wait(req, "all_reduce");
    started_.erase(it);
  }
  void all_reduce_sum_host(double* buf, int64_t n) override {
    TOWERREC_CHECK(n >= 0 && n <= kChunk, "all_reduce_sum_host: size out of range");
    MPI_Request req;
    check(MPI_Iallreduce(MPI_IN_PLACE, buf, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &req),
          "all_reduce");
    wait(req, "all_reduce");
    bytes_sent_ += n * static_cast<int64_t>(sizeof(double));
  }
  void all_gather(const void* send, int64_t bytes, void* recv) override {
    const int c = count(bytes, "all_gather");
    MPI_Request req;
    check(MPI_Iallgather(send, c, MPI_BYTE, recv, c, MPI_BYTE, MPI_COMM_WORLD, &req), "all_gather");
    wait(req, "all_gather");
    bytes_sent_ += bytes;
  }
  void all_gatherv(const void* send, const std::vector<int64_t>& counts, void* recv) override {
    TOWERREC_CHECK(static_cast<int>(counts.size()) == size_, "all_gatherv: one count per rank");
    std::vector<int> c(counts.size()), d(counts.size());
    int64_t off = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      c[r] = count(counts[r], "all_gatherv");
      d[r] = count(off, "all_gatherv");
      off += counts[r];
    }
    count(off, "all_gatherv");
    MPI_Request req;
    check(MPI_Iallgatherv(send, c[static_cast<size_t>(rank_)], MPI_BYTE, recv, c.data(), d.data(), MPI_BYTE,
                          MPI_COMM_WORLD, &req),
          "all_gatherv");
    wait(req, "all_gatherv");
    bytes_sent_ += counts[static_cast<size_t>(rank_)];
  }
  void all_to_allv(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                   const std::vector<int64_t>& recv_counts) override {
    TOWERREC_CHECK(static_cast<int>(send_counts.size()) == size_ &&
                       static_cast<int>(recv_counts.size()) == size_,
                   "all_to_allv: one count per rank");
    std::vector<int> sc(send_counts.size()), sd(sc.size()), rc(sc.size()), rd(sc.size());
    int64_t so = 0, ro = 0;
    for (size_t r = 0; r < sc.size(); ++r) {
      sc[r] = count(send_counts[r], "all_to_allv");
      rc[r] = count(recv_counts[r], "all_to_allv");
      sd[r] = count(so, "all_to_allv");
      rd[r] = count(ro, "all_to_allv");
      so += send_counts[r];
      ro += recv_counts[r];
    }
    count(so, "all_to_allv");
    count(ro, "all_to_allv");
    MPI_Request req;
    check(MPI_Ialltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE,
                         MPI_COMM_WORLD, &req),
          "all_to_allv");
    wait(req, "all_to_allv");
    bytes_sent_ += so - send_counts[static_cast<size_t>(rank_)];
  }
  void broadcast(void* buf, int64_t bytes, int root) override {
    TOWERREC_CHECK(root >= 0 && root < size_, "broadcast: root out of range");
    MPI_Request req;
    check(MPI_Ibcast(buf, count(bytes, "broadcast"), MPI_BYTE, root, MPI_COMM_WORLD, &req), "broadcast");
    wait(req, "broadcast");
    if (rank_ == root) bytes_sent_ += bytes;
  }
  void abort(int status) override { MPI_Abort(MPI_COMM_WORLD, status); }
  void barrier() override {
    MPI_Request req;
    check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "barrier");
    wait(req, "barrier");
  }

 private:
  static constexpr int64_t kChunk = int64_t{1} << 28;

  int count(int64_t bytes, const char* what) const {
    if (bytes < 0 || bytes > INT_MAX)
      throw CommError("rank " + std::to_string(rank_) + ": MPI " + what + " of " +
                      std::to_string(bytes) + " bytes is out of MPI's int range");
    return static_cast<int>(bytes);
  }
  void check(int rc, const char* what) const {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw CommError("rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": MPI " +
                    what + " failed: " + std::string(msg, static_cast<size_t>(len)));
  }
  void wait(MPI_Request& req, const char* what) const {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    for (int spins = 0;; ++spins) {
      int done = 0;
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), what);
      if (done) return;
      if (spins < 2000) continue;
      std::this_thread::sleep_for(std::chrono::microseconds(spins < 20000 ? 20 : 500));
      if (timeout_s_ > 0 && (spins & 63) == 0 &&
          std::chrono::duration<double>(clock::now() - t0).count() > timeout_s_)
        throw CommError("rank " + std::to_string(rank_) + " of " + std::to_string(size_) + ": MPI " +
                        what + " timed out after " + std::to_string(static_cast<int>(timeout_s_)) +
                        " s waiting for the other ranks (one failed, stopped or is on another step)");
    }
  }

  int rank_ = 0, size_ = 1;
  double timeout_s_;
  int64_t last_handle_ = 0;
  std::unordered_map<int64_t, std::vector<MPI_Request>> started_;  // by handle
  bool owns_mpi_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(double timeout_s) {
  return std::make_unique<MpiCommunicator>(timeout_s);
}

}  // namespace towerrec
