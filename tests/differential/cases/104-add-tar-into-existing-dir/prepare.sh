mkdir -p t && echo x > t/extra.conf && tar --sort=name --mtime=@0 --numeric-owner -C t -cf a.tar extra.conf && rm -rf t
