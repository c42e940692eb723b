mkdir -p t/o && echo x > t/o/f && tar --sort=name --mtime=@0 --numeric-owner -C t --owner=1234 --group=5678 -cf a.tar o && rm -rf t
