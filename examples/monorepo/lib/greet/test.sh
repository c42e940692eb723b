. /app/lib/greet.sh
test "$(greet unit)" = "hello from unit (greet library v1)" || { echo "greet: unexpected output" >&2; exit 1; }
echo "greet: tests pass"
