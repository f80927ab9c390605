# source bench/gpu/flash_attn_install.sh (on the GPU machine): park this call's flash-attn-4 wheel folder
# (.carry/fa4a, .carry/fa4b, ... made here by bench/gpu/fa4_wheels.sh) in /tmp/fa4in (kept while the machine stays
# warm, ~30 s after a call) and, once the last folder (the one with cu13.sha256) has come, join the split cu13 wheel,
# check it, and install every wheel into /tmp/fa4. A later call on the same warm machine finds /tmp/fa4 and only
# sets the paths. Sets FA4_READY=1 and exports PYTHONPATH (with the CuTe DSL's dsl_packages, which a --target
# install does not add through its .pth) and FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1 (compiled kernels on disk).
FA4_READY=0
mkdir -p /tmp/fa4in
for d in .carry/fa4?; do [ -d "$d" ] && cp -n "$d"/* /tmp/fa4in/; done
if [ ! -d /tmp/fa4/flash_attn ] && [ -f /tmp/fa4in/cu13.sha256 ]; then
  (cd /tmp/fa4in && w=$(awk '{print $2}' cu13.sha256) && w=${w##*/} && cat "$w".part-* > "$w" && rm -f "$w".part-* \
     && sed -i "s#  .*/#  /tmp/fa4in/#" cu13.sha256 && sha256sum -c --quiet cu13.sha256) \
  && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fa4 /tmp/fa4in/*.whl \
  || echo "flash-attn-4: join or install failed ($(ls /tmp/fa4in | tr '\n' ' '))"
fi
if [ -d /tmp/fa4/flash_attn ]; then
  export PYTHONPATH=/tmp/fa4:/tmp/fa4/nvidia_cutlass_dsl/dsl_packages:$PWD/backend${PYTHONPATH:+:$PYTHONPATH}
  export FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1
  python3 -c "from flash_attn.cute.interface import flash_attn_varlen_func" && FA4_READY=1 \
    && echo "flash-attn-4 imports ($(python3 -c 'import importlib.metadata as m; print(m.version("flash-attn-4"))' 2>/dev/null))"
else
  echo "flash-attn-4: parked $(ls /tmp/fa4in | wc -l) files; carry the next folder within ~30 s"
fi
