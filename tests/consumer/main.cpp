// Loads a checkpoint through the installed library and prints one user's top 3.
#include <cstdio>
#include <exception>

#include "towerrec/api.h"

int main(int argc, char** argv) try {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer MODEL\n");
    return 2;
  }
  towerrec::TrainedModel m = towerrec::TrainedModel::load(argv[1], "cpu");
  const towerrec::TopK top = m.recommend({0}, 3);
  std::printf("consumer: user %s:", m.users().id(0).c_str());
  for (int q = 0; q < top.k; ++q)
    if (top.ids[q] >= 0) std::printf(" %s", m.items().id(top.ids[q]).c_str());
  std::printf("\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "consumer: %s\n", e.what());
  return 1;
}
