mkdir t && echo in > t/inner && tar --sort=name --mtime=@0 --numeric-owner -C t -cf a.tar inner && rm -rf t
