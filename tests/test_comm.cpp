// The single-rank communicator and the launcher environment checks (the
// MPI and NCCL communicators run under mpirun: tests/dist/test_comm_mpi.cpp).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <vector>

#include "towerrec/comm.h"

namespace towerrec {
namespace {

TEST(SingleRankComm, EveryCollectiveIsTheIdentity) {
  SingleRankCommunicator c;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  EXPECT_EQ(c.name(), "single");
  std::vector<float> f = {1.5f, -2.0f};
  c.all_reduce_sum(f.data(), 2);
  EXPECT_EQ(f, (std::vector<float>{1.5f, -2.0f}));
  c.wait_all_reduce(c.start_all_reduce_sum(f.data(), 2));
  EXPECT_EQ(f, (std::vector<float>{1.5f, -2.0f}));
  double d = 3.25;
  c.all_reduce_sum_host(&d, 1);
  EXPECT_EQ(d, 3.25);
  EXPECT_EQ(c.all_gather_u64(7), std::vector<uint64_t>{7});
  std::vector<int64_t> counts;
  EXPECT_EQ(c.all_gatherv_i32({4, 5, 6}, &counts), (std::vector<int32_t>{4, 5, 6}));
  EXPECT_EQ(counts, std::vector<int64_t>{3});
  std::vector<int32_t> in = {1, 2}, out(2, 0);
  c.all_to_allv(in.data(), {8}, out.data(), {8});
  EXPECT_EQ(out, in);
  c.broadcast(in.data(), 8, 0);
  c.barrier();
  EXPECT_TRUE(c.any(true));
  EXPECT_FALSE(c.any(false));
  EXPECT_THROW(c.broadcast(in.data(), 8, 1), Error);
  EXPECT_THROW(c.all_to_allv(in.data(), {8}, out.data(), {4}), Error);
}

TEST(SingleRankComm, RankEnvironmentMustAgree) {
  SingleRankCommunicator c;
  ::setenv("WORLD_SIZE", "1", 1);
  ::setenv("RANK", "0", 1);
  EXPECT_NO_THROW(check_rank_environment(c));
  ::setenv("WORLD_SIZE", "2", 1);
  EXPECT_THROW(check_rank_environment(c), Error);
  ::setenv("WORLD_SIZE", "1", 1);
  ::setenv("RANK", "1", 1);
  EXPECT_THROW(check_rank_environment(c), Error);
  ::setenv("RANK", "x", 1);
  EXPECT_THROW(check_rank_environment(c), Error);
  ::unsetenv("WORLD_SIZE");
  ::unsetenv("RANK");
  ::setenv("LOCAL_RANK", "3", 1);
  EXPECT_EQ(local_rank(), 3);
  ::unsetenv("LOCAL_RANK");
}

}  // namespace
}  // namespace towerrec
