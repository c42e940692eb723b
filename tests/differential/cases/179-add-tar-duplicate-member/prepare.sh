python3 - <<PY
import io, tarfile
with tarfile.open("a.tar", "w", format=tarfile.PAX_FORMAT) as t:
    for d in (b"first\n", b"second\n"):
        i = tarfile.TarInfo("dup"); i.size = len(d); i.mode = 0o644; t.addfile(i, io.BytesIO(d))
PY
