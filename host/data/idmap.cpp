#include <limits>

#include "towerrec/data.h"
#include "towerrec/error.h"

namespace towerrec {

int32_t IdMap::add(std::string_view id) {
  auto it = index_.find(id);
  if (it != index_.end()) return it->second;
  if (ids_.size() >= static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw Error("IdMap: more than 2^31-1 distinct IDs");
  const auto index = static_cast<int32_t>(ids_.size());
  ids_.emplace_back(id);
  index_.emplace(ids_.back(), index);
  return index;
}

int32_t IdMap::add(const std::string& id) { return add(std::string_view(id)); }

int32_t IdMap::find(std::string_view id) const {
  auto it = index_.find(id);
  return it == index_.end() ? -1 : it->second;
}

int32_t IdMap::find(const std::string& id) const { return find(std::string_view(id)); }

}  // namespace towerrec
