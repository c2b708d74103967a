// The single-rank communicator, the helpers every communicator shares, and
// the launcher environment (include/towerrec/comm.h). The MPI and NCCL
// communicators are in host/dist/, built when MPI (and NCCL) are found.
#include "towerrec/comm.h"

#include <cstdlib>
#include <cstring>

namespace towerrec {

namespace {
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 20)
    throw Error(std::string("environment variable ") + name + "='" + v + "' is not a rank number");
  return static_cast<int>(x);
}
}  // namespace

std::vector<uint64_t> Communicator::all_gather_u64(uint64_t v) {
  std::vector<uint64_t> out(static_cast<size_t>(size()));
  all_gather(&v, sizeof v, out.data());
  return out;
}

std::vector<int32_t> Communicator::all_gatherv_i32(const std::vector<int32_t>& v,
                                                   std::vector<int64_t>* counts) {
  const std::vector<uint64_t> n = all_gather_u64(v.size());
  std::vector<int64_t> bytes(n.size());
  int64_t total = 0;
  for (size_t r = 0; r < n.size(); ++r) {
    bytes[r] = static_cast<int64_t>(n[r] * sizeof(int32_t));
    total += static_cast<int64_t>(n[r]);
  }
  std::vector<int32_t> out(static_cast<size_t>(total));
  all_gatherv(v.data(), bytes, out.data());
  if (counts) {
    counts->resize(n.size());
    for (size_t r = 0; r < n.size(); ++r) (*counts)[r] = static_cast<int64_t>(n[r]);
  }
  return out;
}

bool Communicator::any(bool flag) {
  double x = flag ? 1.0 : 0.0;
  all_reduce_sum_host(&x, 1);
  return x > 0.0;
}

void SingleRankCommunicator::all_gather(const void* send, int64_t bytes, void* recv) {
  TOWERREC_CHECK(bytes >= 0, "all_gather: negative size");
  if (bytes && send != recv) std::memmove(recv, send, static_cast<size_t>(bytes));
}

void SingleRankCommunicator::all_gatherv(const void* send, const std::vector<int64_t>& counts,
                                         void* recv) {
  TOWERREC_CHECK(counts.size() == 1 && counts[0] >= 0, "all_gatherv: counts must hold one size");
  all_gather(send, counts[0], recv);
}

void SingleRankCommunicator::all_to_allv(const void* send, const std::vector<int64_t>& send_counts,
                                         void* recv, const std::vector<int64_t>& recv_counts) {
  TOWERREC_CHECK(send_counts.size() == 1 && recv_counts.size() == 1 &&
                     send_counts[0] == recv_counts[0] && send_counts[0] >= 0,
                 "all_to_allv: one rank sends to itself what it receives");
  all_gather(send, send_counts[0], recv);
}

void SingleRankCommunicator::broadcast(void*, int64_t bytes, int root) {
  TOWERREC_CHECK(root == 0 && bytes >= 0, "broadcast: the only rank is 0");
}

bool have_mpi() {
#ifdef TOWERREC_HAVE_MPI
  return true;
#else
  return false;
#endif
}

bool have_nccl() {
#ifdef TOWERREC_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (const char* s = std::getenv(v); s && *s) return true;
  return false;
}

int local_rank() {
  for (const char* v : {"LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"})
    if (const char* s = std::getenv(v); s && *s) return env_int(v, 0);
  return 0;
}

void check_rank_environment(const Communicator& comm) {
  const int rank = env_int("RANK", -1), world = env_int("WORLD_SIZE", -1);
  if (world >= 0 && world != comm.size())
    throw Error("WORLD_SIZE=" + std::to_string(world) + " but the " + comm.name() + " group has " +
                std::to_string(comm.size()) + " ranks (start as many ranks as WORLD_SIZE says)");
  if (rank >= 0 && rank != comm.rank())
    throw Error("RANK=" + std::to_string(rank) + " but this process is rank " +
                std::to_string(comm.rank()) + " of the " + comm.name() + " group");
}

#ifndef TOWERREC_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_communicator(double) {
  throw Error("this towerrec was built without MPI (install libopenmpi-dev: scripts/install-deps "
              "does, then rebuild)");
}
#endif

#ifndef TOWERREC_HAVE_NCCL
std::unique_ptr<Communicator> make_nccl_communicator(Communicator&, int) {
  throw Error("this towerrec was built without NCCL (it needs the CUDA backend, MPI and NCCL's "
              "headers and library under the CUDA toolkit)");
}
#endif

}  // namespace towerrec
