mkdir -p t/d && echo one > t/d/one && ln -s one t/d/l && tar --sort=name --mtime=@0 --numeric-owner -C t -czf a.tar.gz d && rm -rf t
