mkdir -p src/y && ln src/x/f src/y/g && chmod 700 src/y
