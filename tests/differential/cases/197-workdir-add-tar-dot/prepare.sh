mkdir t && echo x > t/x && tar --sort=name --mtime=@0 --numeric-owner -C t -cf a.tar x && rm -rf t
