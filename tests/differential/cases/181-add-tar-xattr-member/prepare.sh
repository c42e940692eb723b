python3 - <<PY
import io, tarfile
with tarfile.open("a.tar", "w", format=tarfile.PAX_FORMAT) as t:
    i = tarfile.TarInfo("withattr"); d = b"x\n"; i.size = len(d); i.mode = 0o644
    i.pax_headers = {"SCHILY.xattr.user.note": "hello"}
    t.addfile(i, io.BytesIO(d))
PY
