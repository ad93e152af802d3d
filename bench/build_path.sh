# Sourced by the GPU scripts. A binary built on another machine finds the repository's files
# (kernels, fixtures) by the path it was built at: link_build_path BINARY CRATE makes that path
# point at this checkout when it does not exist here.
link_build_path() {
  local at
  at=$(grep -aoE "/[A-Za-z0-9._/-]+/crates/$2" "$1" | head -n1 | sed "s|/crates/$2\$||")
  if [ -n "$at" ] && [ ! -e "$at" ]; then
    mkdir -p "$(dirname "$at")" && ln -s "$PWD" "$at"
  fi
}
