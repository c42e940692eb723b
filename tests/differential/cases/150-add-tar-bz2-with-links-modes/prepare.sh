mkdir -p t/srv/s && echo x > t/srv/s/x && ln t/srv/s/x t/srv/s/y && chmod 2775 t/srv/s && ln -s s t/srv/cur && tar --sort=name --mtime=@0 --numeric-owner -C t -cjf a.tar.bz2 srv && rm -rf t
