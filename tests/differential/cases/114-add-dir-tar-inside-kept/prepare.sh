mkdir -p src t && echo x > t/x && tar --sort=name --mtime=@0 --numeric-owner -C t -cf src/inner.tar x && rm -rf t
