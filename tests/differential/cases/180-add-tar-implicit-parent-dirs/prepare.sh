python3 - <<PY
import io, tarfile
with tarfile.open("a.tar", "w", format=tarfile.PAX_FORMAT) as t:
    i = tarfile.TarInfo("x/y/z/deep"); d = b"deep\n"; i.size = len(d); i.mode = 0o600; t.addfile(i, io.BytesIO(d))
PY
