mkdir t && echo 1 > t/one && echo 2 > t/two && tar --sort=name --mtime=@0 --numeric-owner -C t -cf a.tar one && tar --sort=name --mtime=@0 --numeric-owner -C t -cf b.tar two && rm -rf t
