chmod 755 run.sh
