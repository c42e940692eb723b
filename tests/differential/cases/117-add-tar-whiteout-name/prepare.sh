mkdir -p t && echo w > t/.wh.victim && echo n > t/normal && tar --sort=name --mtime=@0 --numeric-owner -C t -cf a.tar .wh.victim normal && rm -rf t
