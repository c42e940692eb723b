# tries: load a kernel module (insmod of a file that is not a module: harmless even if the loader runs)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
na() { echo "n/a: $*"; exit 3; }
echo "not a module" > /tmp/kesc.ko
err=$(insmod /tmp/kesc.ko 2>&1) && reached "insmod succeeded"
case $err in
  *"not permitted"*) denied "$err" ;;
  *"not implemented"* | *"does not support"*) na "the kernel has no module support: $err" ;;
esac
reached "the module loader parsed the file (it needs CAP_SYS_MODULE to get that far): $err"
