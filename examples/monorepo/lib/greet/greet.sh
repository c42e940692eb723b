# greet NAME: the greeting every service prints.
greet() {
  echo "hello from $1 (greet library v1)"
}
