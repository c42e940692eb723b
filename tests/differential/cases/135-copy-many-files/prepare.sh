mkdir many && i=0; while [ $i -lt 150 ]; do echo $i > many/f$i; i=$((i+1)); done
