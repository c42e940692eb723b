python3 - <<PY
import tarfile
with tarfile.open("a.tar", "w", format=tarfile.PAX_FORMAT) as t:
    i = tarfile.TarInfo("alias"); i.type = tarfile.LNKTYPE; i.linkname = "there"; t.addfile(i)
PY
