# source bench/gpu/serve_env.sh: unpack the carried Triton server (.carry/ts) and client/numpy-1.26 packages
# (.carry/np) into /tmp/site, and make /tmp/stubenv: a venv whose python3 sees numpy 1.26.4 first and then
# the machine's own packages (the pytriton stub corrupts tensors under numpy 2: ../shared/FIELD-NOTES.md).
# Exports PATH (stubenv first), PY, PA (perf_analyzer) and LD_LIBRARY_PATH for perf_analyzer.
if [ ! -x /tmp/stubenv/bin/python3 ]; then
  tar xJf .carry/ts/tsmin.tar.xz -C /tmp && tar xJf .carry/np/pkgs.tar.xz -C /tmp || return 1
  mkdir -p /tmp/b64 && dpkg -x /tmp/libb64-0d_*.deb /tmp/b64
  python3 -m venv --without-pip /tmp/stubenv
  SP=$(/tmp/stubenv/bin/python3 -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
  printf "/tmp/site\n/tmp/site/tritonclient-2.48.0.data/purelib\n" > "$SP/a_site.pth"
  # the machine's packages, linked one by one, less those built for numpy 2 (scipy, scikit-learn: transformers
  # imports sklearn when it is installed, and scipy then fails on numpy 1.26)
  MSP=$(python3 -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
  for e in "$MSP"/*; do case "$(basename "$e")" in numpy*|scipy*|sklearn*|scikit_learn*) ;; *) ln -s "$e" "$SP/" ;; esac; done
  chmod +x /tmp/site/tritonclient-2.48.0.data/data/bin/perf_analyzer /tmp/site/pytriton/tritonserver/bin/* \
    /tmp/site/pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub 2>/dev/null
fi
# specdec itself, for the stubs too (PYTHONPATH does not reach a stub's interpreter)
echo "$PWD/backend" > "$(/tmp/stubenv/bin/python3 -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")/c_specdec.pth"
export PATH=/tmp/stubenv/bin:$PATH PY=/tmp/stubenv/bin/python3
export PA=/tmp/site/tritonclient-2.48.0.data/data/bin/perf_analyzer
export PA_LIBS=/tmp/b64/usr/lib/x86_64-linux-gnu:/tmp/site/nvidia/cuda_runtime/lib
