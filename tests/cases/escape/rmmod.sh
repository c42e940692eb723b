# tries: unload a kernel module (delete_module of a name no module has)
# expect: denied
denied() { echo "denied: $*"; exit 0; }
reached() { echo "reached: $*"; exit 1; }
na() { echo "n/a: $*"; exit 3; }
err=$(rmmod kesc_no_such_module 2>&1) && reached "rmmod succeeded"
case $err in
  *"not permitted"*) denied "$err" ;;
  *"not implemented"*) na "the kernel has no module support: $err" ;;
esac
reached "the kernel looked the module up (it needs CAP_SYS_MODULE to get that far): $err"
