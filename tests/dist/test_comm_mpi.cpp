// The MPI communicator's collectives (and NCCL's where every rank has a GPU),
// run under mpirun -np N by ctest: each result is checked against the value
// every rank computes locally from the ranks' known inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <numeric>
#include <thread>

#include "towerrec/backend.h"
#include "towerrec/comm.h"

namespace towerrec {
namespace {

Communicator* g_comm = nullptr;

// Exactly representable inputs: the sums are exact whatever the order.
float input(int rank, int64_t i) { return static_cast<float>(rank + 1) * 0.5f + static_cast<float>(i % 1024) * 0.25f; }

void check_all_reduce(Communicator& c, int64_t n) {
  std::vector<float> buf(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) buf[i] = input(c.rank(), i);
  c.all_reduce_sum(buf.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    float want = 0;
    for (int r = 0; r < c.size(); ++r) want += input(r, i);
    ASSERT_EQ(buf[i], want) << "element " << i << " of " << n;
  }
}

TEST(MpiComm, RankAndSize) {
  Communicator& c = *g_comm;
  EXPECT_EQ(c.name(), "mpi");
  EXPECT_EQ(c.memory(), CommMemory::kHost);
  EXPECT_GE(c.size(), 2) << "run under mpirun -np 2 (or more)";
  EXPECT_GE(c.rank(), 0);
  EXPECT_LT(c.rank(), c.size());
  const std::vector<uint64_t> ranks = c.all_gather_u64(static_cast<uint64_t>(c.rank()));
  for (int r = 0; r < c.size(); ++r) EXPECT_EQ(ranks[r], static_cast<uint64_t>(r));
}

TEST(MpiComm, AllReduceSum) {
  for (int64_t n : {0, 1, 7, 4096, 100003}) check_all_reduce(*g_comm, n);
}

// Several sums started at once (buckets of one buffer), another collective
// made while they run, waited for out of order: each gets the blocking sum.
TEST(MpiComm, StartedAllReducesCompleteWithTheBlockingSums) {
  Communicator& c = *g_comm;
  const int64_t n = 10007, bucket = 1000;
  std::vector<float> buf(static_cast<size_t>(n)), want(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) buf[i] = want[i] = input(c.rank(), i) * 0.125f + 1.0f / 3.0f;
  c.all_reduce_sum(want.data(), n);
  std::vector<int64_t> handles;
  for (int64_t at = 0; at < n; at += bucket)
    handles.push_back(c.start_all_reduce_sum(buf.data() + at, std::min(bucket, n - at)));
  EXPECT_EQ(c.all_gather_u64(7).size(), static_cast<size_t>(c.size()));
  for (size_t h = handles.size(); h-- > 0;) c.wait_all_reduce(handles[h]);
  EXPECT_TRUE(buf == want);
  EXPECT_THROW(c.wait_all_reduce(handles[0]), Error);  // waited for already
}

TEST(MpiComm, AllReduceSumHostDoubles) {
  Communicator& c = *g_comm;
  std::vector<double> v = {1.0 + c.rank(), 1e-3 * c.rank(), -2.0};
  c.all_reduce_sum_host(v.data(), 3);
  double a = 0, b = 0;
  for (int r = 0; r < c.size(); ++r) a += 1.0 + r, b += 1e-3 * r;
  EXPECT_DOUBLE_EQ(v[0], a);
  EXPECT_DOUBLE_EQ(v[1], b);
  EXPECT_DOUBLE_EQ(v[2], -2.0 * c.size());
}

TEST(MpiComm, AllGather) {
  Communicator& c = *g_comm;
  const int64_t m = 3;
  std::vector<int32_t> send(m), recv(static_cast<size_t>(m * c.size()), -1);
  for (int64_t j = 0; j < m; ++j) send[j] = c.rank() * 10 + static_cast<int32_t>(j);
  c.all_gather(send.data(), m * 4, recv.data());
  for (int r = 0; r < c.size(); ++r)
    for (int64_t j = 0; j < m; ++j) EXPECT_EQ(recv[r * m + j], r * 10 + j);
}

TEST(MpiComm, AllGathervWithAnEmptyRank) {
  Communicator& c = *g_comm;
  auto count = [](int r) { return r == 0 ? 0 : r + 2; };  // rank 0 sends nothing
  std::vector<int32_t> send(static_cast<size_t>(count(c.rank())));
  for (size_t j = 0; j < send.size(); ++j) send[j] = c.rank() * 100 + static_cast<int32_t>(j);
  std::vector<int64_t> counts;
  const std::vector<int32_t> all = c.all_gatherv_i32(send, &counts);
  size_t at = 0;
  for (int r = 0; r < c.size(); ++r) {
    ASSERT_EQ(counts[r], count(r));
    for (int j = 0; j < count(r); ++j) EXPECT_EQ(all[at++], r * 100 + j);
  }
  EXPECT_EQ(at, all.size());
}

TEST(MpiComm, AllToAllv) {
  Communicator& c = *g_comm;
  const int me = c.rank(), n = c.size();
  // Rank r sends (q + 1) * (r + 1) - 1 ints to rank q (rank 0 sends none to itself).
  auto count = [](int from, int to) { return (to + 1) * (from + 1) - 1; };
  auto value = [](int from, int to, int j) { return from * 1000 + to * 10 + j; };
  std::vector<int32_t> send;
  std::vector<int64_t> sc(n), rc(n);
  for (int q = 0; q < n; ++q) {
    sc[q] = 4 * count(me, q);
    rc[q] = 4 * count(q, me);
    for (int j = 0; j < count(me, q); ++j) send.push_back(value(me, q, j));
  }
  std::vector<int32_t> recv(static_cast<size_t>(std::accumulate(rc.begin(), rc.end(), int64_t{0}) / 4), -1);
  const int64_t before = c.bytes_sent();
  c.all_to_allv(send.data(), sc, recv.data(), rc);
  EXPECT_EQ(c.bytes_sent() - before, static_cast<int64_t>(send.size()) * 4 - sc[me]);
  size_t at = 0;
  for (int q = 0; q < n; ++q)
    for (int j = 0; j < count(q, me); ++j) EXPECT_EQ(recv[at++], value(q, me, j)) << "from rank " << q;
}

TEST(MpiComm, BroadcastFromEveryRoot) {
  Communicator& c = *g_comm;
  for (int root = 0; root < c.size(); ++root) {
    std::vector<double> v(5, c.rank() == root ? 1.5 * (root + 1) : -1.0);
    c.broadcast(v.data(), static_cast<int64_t>(v.size() * sizeof(double)), root);
    for (double x : v) EXPECT_EQ(x, 1.5 * (root + 1));
  }
}

TEST(MpiComm, BarrierAndAny) {
  Communicator& c = *g_comm;
  c.barrier();
  EXPECT_FALSE(c.any(false));
  EXPECT_TRUE(c.any(c.rank() == c.size() - 1));
}

TEST(MpiComm, BadSizesAreErrors) {
  Communicator& c = *g_comm;
  std::vector<int64_t> wrong(static_cast<size_t>(c.size() + 1), 0);
  EXPECT_THROW(c.all_gatherv(nullptr, wrong, nullptr), Error);
  EXPECT_THROW(c.broadcast(nullptr, 0, c.size()), Error);
}

// A rank that does not come to a collective: the waiting rank gets a
// CommError naming itself and the call after the timeout, not a hang. The
// late rank's barrier then matches the abandoned one (collectives on a group
// match in order), so the group stays usable.
TEST(MpiComm, TimeoutNamesTheRank) {
  Communicator& c = *g_comm;
  if (c.rank() == 0) {
    auto quick = make_mpi_communicator(0.5);  // the same group, MPI already running
    const auto t0 = std::chrono::steady_clock::now();
    try {
      quick->barrier();
      ADD_FAILURE() << "the barrier returned while rank 1 was away";
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find("rank 0 of"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
    }
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  }
  if (c.rank() != 0) c.barrier();  // matches rank 0's abandoned barrier
  c.barrier();                     // and the group still works
  check_all_reduce(c, 64);
}

// NCCL over CUDA device buffers, one GPU per rank (skipped without them).
TEST(NcclComm, CollectivesOnDeviceBuffers) {
  Communicator& c = *g_comm;
  if (!have_nccl()) GTEST_SKIP() << "built without NCCL";
  int ok = cuda_available() ? 1 : 0;
  std::unique_ptr<Backend> be;
  if (ok) {
    try {
      be = make_backend("cuda:" + std::to_string(local_rank()));
    } catch (const Error&) {
      ok = 0;
    }
  }
  if (c.any(!ok)) GTEST_SKIP() << "needs one CUDA device per rank";
  auto nccl = make_nccl_communicator(c, local_rank());
  EXPECT_EQ(nccl->memory(), CommMemory::kDevice);
  EXPECT_EQ(nccl->rank(), c.rank());
  const int64_t n = 10007;
  std::vector<float> host(n);
  for (int64_t i = 0; i < n; ++i) host[i] = input(c.rank(), i);
  DeviceArray<float> d(be.get(), n);
  be->to_device(d.data(), host.data(), n * 4);
  be->synchronize();
  nccl->all_reduce_sum(d.data(), n);
  be->to_host(host.data(), d.data(), n * 4);
  for (int64_t i = 0; i < n; ++i) {
    float want = 0;
    for (int r = 0; r < c.size(); ++r) want += input(r, i);
    ASSERT_EQ(host[i], want) << i;
  }
  // The same sum started in buckets, waited for last bucket first.
  for (int64_t i = 0; i < n; ++i) host[i] = input(c.rank(), i);
  be->to_device(d.data(), host.data(), n * 4);
  be->synchronize();
  std::vector<int64_t> handles;
  for (int64_t at = 0; at < n; at += 3000)
    handles.push_back(nccl->start_all_reduce_sum(d.data() + at, std::min<int64_t>(3000, n - at)));
  for (size_t h = handles.size(); h-- > 0;) nccl->wait_all_reduce(handles[h]);
  be->to_host(host.data(), d.data(), n * 4);
  for (int64_t i = 0; i < n; ++i) {
    float want = 0;
    for (int r = 0; r < c.size(); ++r) want += input(r, i);
    ASSERT_EQ(host[i], want) << "bucketed, element " << i;
  }
  // all_gatherv and all_to_allv of int32 rows, as in the sharded tables.
  std::vector<int32_t> mine(static_cast<size_t>(c.rank() + 1), c.rank() + 7);
  std::vector<int64_t> counts(c.size());
  int64_t total = 0;
  for (int r = 0; r < c.size(); ++r) total += (counts[r] = 4 * (r + 1));
  DeviceArray<int32_t> dm(be.get(), static_cast<int64_t>(mine.size())), dall(be.get(), total / 4);
  be->to_device(dm.data(), mine.data(), mine.size() * 4);
  be->synchronize();
  nccl->all_gatherv(dm.data(), counts, dall.data());
  std::vector<int32_t> all(static_cast<size_t>(total / 4));
  be->to_host(all.data(), dall.data(), all.size() * 4);
  size_t at = 0;
  for (int r = 0; r < c.size(); ++r)
    for (int j = 0; j <= r; ++j) EXPECT_EQ(all[at++], r + 7);
  std::vector<int32_t> s(static_cast<size_t>(c.size()));
  for (int q = 0; q < c.size(); ++q) s[q] = c.rank() * 100 + q;
  std::vector<int64_t> four(c.size(), 4);
  DeviceArray<int32_t> ds(be.get(), c.size()), dr(be.get(), c.size());
  be->to_device(ds.data(), s.data(), s.size() * 4);
  be->synchronize();
  nccl->all_to_allv(ds.data(), four, dr.data(), four);
  be->to_host(s.data(), dr.data(), s.size() * 4);
  for (int q = 0; q < c.size(); ++q) EXPECT_EQ(s[q], q * 100 + c.rank());
  nccl->barrier();
}

}  // namespace
}  // namespace towerrec

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = towerrec::make_mpi_communicator(120.0);
  towerrec::g_comm = comm.get();
  const int rc = RUN_ALL_TESTS();
  // Every rank's verdict decides the exit status of all.
  const bool failed = comm->any(rc != 0);
  towerrec::g_comm = nullptr;
  comm.reset();
  return failed ? 1 : 0;
}
