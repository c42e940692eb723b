mkdir -p t/p && echo x > t/p/x && (cd t && tar --sort=name --mtime=@0 --numeric-owner -cf ../a.tar .) && rm -rf t
