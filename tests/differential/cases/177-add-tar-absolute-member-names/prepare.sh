python3 - <<PY
import io, tarfile
with tarfile.open("a.tar", "w", format=tarfile.PAX_FORMAT) as t:
    i = tarfile.TarInfo("/abs/f"); d = b"abs\n"; i.size = len(d); t.addfile(i, io.BytesIO(d))
PY
