python3 - <<PY
import io, tarfile
with tarfile.open("a.tar", "w", format=tarfile.PAX_FORMAT) as t:
    i = tarfile.TarInfo("d/f"); d = b"f\n"; i.size = len(d); i.mode = 0o644; t.addfile(i, io.BytesIO(d))
    i = tarfile.TarInfo("d"); i.type = tarfile.DIRTYPE; i.mode = 0o700; t.addfile(i)
PY
