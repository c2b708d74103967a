// Communicators: the collectives data-parallel training and sharded scoring
// run between ranks (one process per CPU host or per GPU).
//
// A Communicator moves buffers of one memory kind: kHost (plain host memory;
// the CPU backend's buffers are host memory) or kDevice (a CUDA backend's
// allocate()d memory). Every call is collective: each rank of the group makes
// the same calls in the same order with matching sizes. Every call blocks but
// start_all_reduce_sum, which starts a sum that wait_all_reduce completes.
// Sizes are in elements for all_reduce_sum and in bytes elsewhere.
//
//  * SingleRankCommunicator: rank 0 of 1; every collective is the identity
//    (a copy where input and output differ). What runs when not distributed.
//  * make_mpi_communicator: MPI_COMM_WORLD, host memory. It initialises MPI
//    when nothing has yet (and finalises it when destroyed), and waits for each
//    collective at most `timeout_s` seconds: past that it throws a CommError
//    naming the collective and this rank, rather than hanging on a rank that
//    died or took another path.
//  * make_nccl_communicator: NCCL over the CUDA devices, one rank per GPU
//    (the device LOCAL_RANK or the MPI local rank), device memory; bootstrapped
//    over an MPI communicator that broadcasts rank 0's NCCL unique ID.
//
// Header-only for users: no MPI, NCCL or CUDA header is included here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "towerrec/error.h"

namespace towerrec {

// A collective failed or timed out; the message names the rank and the call.
class CommError : public Error {
 public:
  using Error::Error;
};

enum class CommMemory { kHost, kDevice };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual CommMemory memory() const = 0;
  // "single", "mpi", "nccl".
  virtual std::string name() const = 0;

  // buf[0..n) = the sum over ranks of every rank's buf[0..n), in place.
  // The sum is taken in rank order (0 + 1 + ... + N-1) by the MPI and single
  // implementations, so every rank holds bit-identical results.
  virtual void all_reduce_sum(float* buf, int64_t n) = 0;
  // Non-blocking all_reduce_sum: starts the sum of buf[0..n) and returns a
  // handle for wait_all_reduce; buf stays untouched by the caller until then.
  // Every rank starts the same sums in the same order (and may make other
  // collectives while they run). The MPI communicator starts MPI_Iallreduce
  // (it progresses where the MPI library progresses it: in its own threads
  // or transports where it has them, else inside MPI calls such as the wait);
  // NCCL queues the sum on its stream and returns. The base implementation
  // sums at once and leaves nothing to wait for.
  virtual int64_t start_all_reduce_sum(float* buf, int64_t n) {
    all_reduce_sum(buf, n);
    return 0;
  }
  // Returns once the started sum `handle` is complete (NCCL: and every sum
  // started before it); the MPI communicator's timeout applies as in a call.
  virtual void wait_all_reduce(int64_t handle) {}
  // The same for doubles (losses, counters); host memory on every communicator.
  virtual void all_reduce_sum_host(double* buf, int64_t n) = 0;
  // Each rank sends `bytes` from `send`; recv[r * bytes ..] receives rank r's.
  virtual void all_gather(const void* send, int64_t bytes, void* recv) = 0;
  // Rank r sends counts[r] bytes (counts the same on every rank); recv holds
  // them back to back in rank order (sum of counts bytes).
  virtual void all_gatherv(const void* send, const std::vector<int64_t>& counts, void* recv) = 0;
  // send holds send_counts[r] bytes for each rank r back to back; recv receives
  // recv_counts[r] bytes from each rank r back to back. recv_counts[r] on this
  // rank must equal send_counts[this rank] on rank r.
  virtual void all_to_allv(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                           const std::vector<int64_t>& recv_counts) = 0;
  // buf[0..bytes) of rank `root` on every rank.
  virtual void broadcast(void* buf, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every rank of the group at once with exit status `status` (MPI_Abort)
  // when one rank fails and the others would wait on it; does nothing on a
  // single rank.
  virtual void abort(int status) {}

  // Helpers over the collectives above (host memory).
  // Every rank's value, in rank order.
  std::vector<uint64_t> all_gather_u64(uint64_t v);
  // Every rank's vector back to back in rank order; `counts` receives each
  // rank's element count.
  std::vector<int32_t> all_gatherv_i32(const std::vector<int32_t>& v, std::vector<int64_t>* counts = nullptr);
  bool any(bool flag);  // true when any rank passes true

  // Payload bytes this rank has passed to collectives since it was made (n
  // floats of an all-reduce count 4n, whatever the algorithm moves on the
  // wire). For benchmarks and logs.
  int64_t bytes_sent() const { return bytes_sent_; }

 protected:
  int64_t bytes_sent_ = 0;
};

class SingleRankCommunicator final : public Communicator {
 public:
  explicit SingleRankCommunicator(CommMemory memory = CommMemory::kHost) : memory_(memory) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  CommMemory memory() const override { return memory_; }
  std::string name() const override { return "single"; }
  void all_reduce_sum(float*, int64_t) override {}
  void all_reduce_sum_host(double*, int64_t) override {}
  void all_gather(const void* send, int64_t bytes, void* recv) override;
  void all_gatherv(const void* send, const std::vector<int64_t>& counts, void* recv) override;
  void all_to_allv(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                   const std::vector<int64_t>& recv_counts) override;
  void broadcast(void*, int64_t, int root) override;
  void barrier() override {}

 private:
  CommMemory memory_;
};

// Whether this build has MPI (and NCCL) communicators.
bool have_mpi();
bool have_nccl();
// True when this process was started by an MPI launcher (mpirun, srun):
// OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK is set.
bool launched_by_mpi();

// MPI_COMM_WORLD (see above). Throws Error when the build has no MPI.
// timeout_s <= 0 waits without a limit.
std::unique_ptr<Communicator> make_mpi_communicator(double timeout_s = 300.0);
// The rank's GPU among this node's: LOCAL_RANK, else the MPI launcher's local
// rank (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID), else 0.
int local_rank();
// NCCL over `bootstrap`'s ranks on CUDA device `device` (-1: local_rank()).
// Throws Error when the build has no NCCL or the device is missing.
std::unique_ptr<Communicator> make_nccl_communicator(Communicator& bootstrap, int device = -1);

// Checks the RANK / WORLD_SIZE environment variables, where set, against the
// communicator's rank and size (a launcher that sets them and MPI's disagree:
// Error naming both).
void check_rank_environment(const Communicator& comm);

}  // namespace towerrec
