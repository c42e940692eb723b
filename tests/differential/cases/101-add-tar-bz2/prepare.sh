mkdir -p t/d/e && echo one > t/d/one && echo two > t/d/e/two && ln -s one t/d/l && tar --sort=name --mtime=@0 --numeric-owner -C t -cjf a.tar.bz2 d && rm -rf t
